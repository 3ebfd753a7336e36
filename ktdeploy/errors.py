"""Errors that carry their exit code and a message naming the problem and the fix.

Plain exceptions: the filter plugins import the modules that raise them under `ansible-playbook`,
where Click need not be installed. The CLI (`ktdeploy.cli`) shows them as Click errors.
"""

from __future__ import annotations

from ktdeploy import exitcodes


class KtdeployError(Exception):
    """An error shown as one clear line, with the exit code of its kind."""

    exit_code = exitcodes.FAILED

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message if not hint else f"{message}\n  fix: {hint}"
        super().__init__(self.message)
        self.hint = hint

    def format_message(self) -> str:
        return self.message


class BadInput(KtdeployError):
    exit_code = exitcodes.BAD_INPUT


class Unreachable(KtdeployError):
    exit_code = exitcodes.UNREACHABLE


class PlanProblem(KtdeployError):
    exit_code = exitcodes.PLAN_PROBLEM
