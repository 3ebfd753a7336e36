"""Scripts that run on the target host (stdlib-only Python, shipped over SSH as `python3 -`)."""

from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent


def source(name: str) -> str | None:
    """The text of a host-side script shipped in this package, or None when it is not here."""
    path = _DIR / f"{name}.py"
    return path.read_text() if path.is_file() else None
