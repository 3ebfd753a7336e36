"""Cache of `ansible-inventory --list` results for static inventories.

`ansible-inventory` takes 1-3 s to start, which would dominate quick commands such as `ktdeploy
status`. A static inventory (YAML/INI/JSON files, with their group_vars/host_vars) gives the same
answer as long as its files are byte-identical, so the answer is kept under ~/.cache/ktdeploy/
inventory, keyed by the files' contents and the Ansible version. Anything dynamic (executable
scripts, inventory plugins) or vault-encrypted is never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

_STATIC_SUFFIXES = {"", ".yml", ".yaml", ".ini", ".json", ".cfg", ".txt"}
_PLUGIN = re.compile(rb"^plugin\s*:", re.M)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ktdeploy" / "inventory"


def _inventory_files(path: Path) -> list[Path]:
    roots = [path] if path.is_dir() else [path, path.parent / "group_vars", path.parent / "host_vars"]
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files.extend(sorted(p for p in root.rglob("*") if p.is_file()))
    return files


def key(path: Path) -> str | None:
    """The cache key of a static inventory, or None when it must be read afresh every time."""
    from ansible.release import __version__ as ansible_version

    h = hashlib.sha256(f"{path.resolve()}\0{ansible_version}\0".encode())
    for f in _inventory_files(path):
        if f.suffix not in _STATIC_SUFFIXES or os.access(f, os.X_OK):
            return None
        data = f.read_bytes()
        if b"$ANSIBLE_VAULT" in data or _PLUGIN.search(data):
            return None
        h.update(f"{f}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def get(k: str) -> dict | None:
    try:
        return json.loads((cache_dir() / f"{k}.json").read_text())
    except (OSError, ValueError):
        return None


def put(k: str, data: dict) -> None:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{k}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # inventories may hold passwords
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, d / f"{k}.json")
