"""Dependencies point one way (issue 13): library code never imports the command line, data never
imports evaluation, and the prompt -> answer path imports no application. Read from the source's
import statements (function-level imports included), so a lazy import cannot hide a back edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "adallava"

# (package whose modules are checked, packages they must not import, why)
RULES = [
    ("", ("adallava.cli", "adallava.commands"), "library code must not depend on the command line"),
    ("data", ("adallava.eval", "adallava.serve", "adallava.train"), "data is below the applications"),
    ("inference", ("adallava.eval", "adallava.serve", "adallava.data", "adallava.train"),
     "the one prompt -> answer path is below every application"),  # fmt: skip
    ("serve", ("adallava.eval", "adallava.train"), "serving uses the inference path, not evaluation"),
]
CLI_MODULES = ("cli.py", "commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module an import statement in `source` names (a module of `package`), absolute or
    resolved from relative, at any depth (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from ..x import y` in package a.b.c -> a.b.x
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base]).strip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    root = SRC / package if package else SRC
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(SRC)
        if not package and (relative.parts[0] in CLI_MODULES):
            continue
        for name in sorted(imported_modules(path.read_text(), package_of(path))):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{relative} imports {name}")
    return found


@pytest.mark.parametrize("package,forbidden,why", RULES, ids=[rule[0] or "library" for rule in RULES])
def test_dependencies_point_one_way(package, forbidden, why):
    # Bug caught: a back edge (e.g. serve/protocol importing commands.ask, data importing eval) that
    # makes a lower layer impossible to use, test or move without dragging an application along.
    found = violations(package, forbidden)
    assert not found, f"{why}:\n" + "\n".join(found)


def test_the_import_scanner_sees_lazy_and_relative_imports():
    # Bug caught: the rule test passing vacuously because function-level or relative imports are missed.
    source = "def f():\n    from adallava.eval import readers\n    from ..commands import ask\n"
    source += "import adallava.cli\n"
    names = imported_modules(source, "adallava.data")
    assert {"adallava.eval.readers", "adallava.commands.ask", "adallava.cli"} <= names
