"""Profiles: named sets of extra-vars (`ktdeploy provision --profile NAME`, `ktdeploy render --profile NAME`)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ktdeploy.errors import BadInput

_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.yml"))


def path(name: str) -> Path:
    candidate = _DIR / f"{name}.yml"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) or not candidate.is_file():
        raise BadInput(f"unknown profile {name!r}", hint=f"use one of: {', '.join(names()) or '(none)'}")
    return candidate


def load(name: str) -> dict:
    """The extra-vars of profile NAME (ktdeploy/profiles/NAME.yml)."""
    return yaml.safe_load(path(name).read_text()) or {}
