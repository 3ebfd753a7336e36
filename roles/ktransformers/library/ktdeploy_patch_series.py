#!/usr/bin/python
"""Apply a patch series to a source tree, idempotently, with GNU patch."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ktdeploy_patch_series
short_description: Apply a series of unified diffs to a source tree, once
description:
  - Each patch is checked in order. One that reverses cleanly is already applied and is skipped;
    one that applies cleanly is applied; any other stops the run with the patch's name and the
    hunk that failed, before touching the tree (every decision is a dry run first).
options:
  src:
    description: Root of the source tree (patches are applied with -p1 there).
    required: true
    type: path
  patches:
    description: The series in order, each a dict with C(name) and C(content).
    required: true
    type: list
    elements: dict
"""

RETURN = r"""
applied:
  description: names of the patches applied by this run
  type: list
  returned: always
already_applied:
  description: names of the patches that were already applied
  type: list
  returned: always
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule


def failed_hunks(output: str) -> list[tuple[str, int, int | None]]:
    """(file, hunk number, line) for every failed hunk in GNU patch's output."""
    current = None
    found = []
    for line in output.splitlines():
        m = re.match(r"(?:checking|patching) file (.+?)\s*$", line)
        if m:
            current = m.group(1).strip("'\"")
            continue
        m = re.match(r"Hunk #(\d+) FAILED(?: at (\d+))?", line)
        if m and current:
            found.append((current, int(m.group(1)), int(m.group(2)) if m.group(2) else None))
        elif current and re.search(r"can't find file|No such file", line):
            found.append((current, 0, None))
    return found


def hunk_text(patch: str, path: str, number: int) -> str:
    """Text of hunk `number` (1-based) of `path` in a unified diff."""
    in_file = False
    hunk = 0
    lines: list[str] = []
    for line in patch.splitlines():
        if line.startswith("+++ "):
            target = line[4:].split("\t")[0].strip()
            in_file = target.split("/", 1)[-1] == path or target == path
            hunk = 0
            continue
        if line.startswith("--- ") or line.startswith("diff "):
            if lines:
                break
            continue
        if in_file and line.startswith("@@"):
            hunk += 1
            if lines:
                break
        if in_file and hunk == number:
            lines.append(line)
    return "\n".join(lines)


def describe_failure(name: str, patch: str, output: str) -> str:
    hunks = failed_hunks(output)
    if not hunks:
        return f"patch {name} does not apply:\n{output.strip()}"
    path, number, at = hunks[0]
    if number == 0:
        return f"patch {name} does not apply: {path} is missing from the source tree"
    where = f" (expected near line {at})" if at else ""
    return f"patch {name} does not apply: {path} hunk #{number}{where} failed:\n{hunk_text(patch, path, number)}"


def _patch(module, src, patch_file, *extra):
    cmd = [module.get_bin_path("patch", required=True), "-p1", "-f", "--no-backup-if-mismatch", "-d", src, "-i", patch_file, *extra]
    rc, out, err = module.run_command(cmd)
    return rc, out + err


def main():
    module = AnsibleModule(
        argument_spec={"src": {"type": "path", "required": True}, "patches": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    src = module.params["src"]
    if not os.path.isdir(src):
        module.fail_json(msg=f"source tree {src} does not exist")
    applied, already_applied = [], []
    for entry in module.params["patches"]:
        name, content = entry["name"], entry["content"]
        with tempfile.NamedTemporaryFile("w", suffix=".patch", delete=False) as fh:
            fh.write(content)
        try:
            if _patch(module, src, fh.name, "-R", "--dry-run")[0] == 0:
                already_applied.append(name)
                continue
            rc, out = _patch(module, src, fh.name, "--dry-run")
            if rc != 0:
                module.fail_json(msg=describe_failure(name, content, out), applied=applied, already_applied=already_applied)
            if not module.check_mode:
                rc, out = _patch(module, src, fh.name)
                if rc != 0:
                    module.fail_json(msg=describe_failure(name, content, out), applied=applied, already_applied=already_applied)
            applied.append(name)
        finally:
            os.unlink(fh.name)
    module.exit_json(changed=bool(applied), applied=applied, already_applied=already_applied)


if __name__ == "__main__":
    main()
