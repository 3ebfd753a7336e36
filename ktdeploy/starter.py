"""A starter inventory: a copy of the shipped inventory/sample (`ktdeploy init DIR`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ktdeploy.errors import BadInput, KtdeployError
from ktdeploy.resources import sample_inventory


def _writable_parent(dest: Path) -> None:
    """BadInput unless dest can be made: its nearest existing ancestor is a writable directory."""
    parent = dest
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    why = (f"{parent} is not a directory" if not parent.is_dir()
           else f"{parent} is not writable" if not os.access(parent, os.W_OK | os.X_OK) else None)
    if why:
        raise BadInput(f"cannot write the inventory into {dest}: {why}",
                       hint="name a new or existing directory you can write to")


def copy_sample(dest: Path, sample: Path | None = None) -> list[Path]:
    """Copy the sample inventory into dest; refuses (BadInput) before writing if any file exists or
    dest cannot be written."""
    sample = sample or sample_inventory()
    files = sorted(p for p in sample.rglob("*") if p.is_file())
    if not files:
        raise KtdeployError(f"the sample inventory {sample} is missing or empty",
                            hint="reinstall ktdeploy (scripts/setup.sh)")
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"{dest} exists and is not a directory", hint="name a new or existing directory")
    _writable_parent(dest)
    clashes = [dest / f.relative_to(sample) for f in files if (dest / f.relative_to(sample)).exists()]
    if clashes:
        raise BadInput(
            f"{len(clashes)} file(s) already exist in {dest}: {', '.join(str(c) for c in clashes)}",
            hint="pick an empty directory, or move those files away first (nothing was written)",
        )
    written: list[Path] = []
    for f in files:
        target = dest / f.relative_to(sample)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        except OSError as exc:
            done = f" ({len(written)} file(s) written before: {', '.join(map(str, written))})" if written else ""
            raise BadInput(f"cannot write the inventory into {dest}: {exc.strerror} ({exc.filename}){done}",
                           hint="name a new or existing directory you can write to") from None
        written.append(target)
    return written
