"""Layering (docs/architecture.md, "Layout"): only `ktdeploy/cli/` imports Click, and its command
modules never import one another; what two commands share lives in a plain module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ktdeploy"
CLI = PACKAGE / "cli"


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module path imports (at any depth, lazy imports in functions too), absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = list(path.relative_to(root).with_suffix("").parts)[: -node.level]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def plain_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if CLI not in p.parents)


def command_modules() -> list[Path]:
    return sorted(p for p in CLI.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", plain_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_plain_modules_do_not_import_click(path):
    clicky = sorted(n for n in imported_modules(path) if n == "click" or n.startswith("click."))
    assert not clicky, f"{path.relative_to(PACKAGE.parent)} imports {clicky}: only ktdeploy/cli/ may"
    cli = sorted(n for n in imported_modules(path) if n == "ktdeploy.cli" or n.startswith("ktdeploy.cli."))
    assert not cli, f"{path.relative_to(PACKAGE.parent)} imports the CLI ({cli})"


@pytest.mark.parametrize("path", command_modules(), ids=lambda p: p.name)
def test_command_modules_do_not_import_each_other(path):
    others = {f"ktdeploy.cli.{p.stem}" for p in command_modules() if p != path}
    found = sorted(n for n in imported_modules(path) if any(n == o or n.startswith(o + ".") for o in others))
    assert not found, f"ktdeploy/cli/{path.name} imports {found}: move what they share into a plain module"


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "ktdeploy" / "cli"
    pkg.mkdir(parents=True)
    mod = pkg / "a_cmd.py"
    mod.write_text("def f():\n    from .b_cmd import x\n    import click.testing\n")
    assert {"ktdeploy.cli.b_cmd", "ktdeploy.cli.b_cmd.x", "click.testing"} <= imported_modules(mod, tmp_path)
