"""Errors that carry their exit code and a message naming the problem and the fix."""

from __future__ import annotations

import click

from ktdeploy import exitcodes


class KtdeployError(click.ClickException):
    """An error shown as one clear line, with the exit code of its kind."""

    exit_code = exitcodes.FAILED

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")
        self.hint = hint


class BadInput(KtdeployError):
    exit_code = exitcodes.BAD_INPUT


class Unreachable(KtdeployError):
    exit_code = exitcodes.UNREACHABLE


class PlanProblem(KtdeployError):
    exit_code = exitcodes.PLAN_PROBLEM
