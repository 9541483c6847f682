"""Dependencies point one way (issue 13; docs/architecture.md):

    core -> modules -> engine -> io -> inference -> applications (data, train, eval, serve, report)
         -> integrations (third-party tools such as lmms-eval) -> cli

A package may import its own modules and packages of lower layers, never higher ones; among the
applications only the edges in APP_EDGES exist (evaluation and training read data; nothing reads
an application but the CLI). Read from the source's import statements (function-level imports
included), so a lazy import cannot hide a back edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "adallava"
LAYERS = {
    "core": 0,
    "modules": 1,
    "engine": 2,
    "io": 3,
    "inference": 4,
    "data": 5,
    "train": 5,
    "eval": 5,
    "serve": 5,
    "report": 5,
    "testing": 5,
    "integrations": 6,
    "cli": 7,
}
APP_EDGES = {("eval", "data"), ("train", "data")}  # which application may import which


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


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


def top_package(module: str) -> str | None:
    """'adallava.engine.llava' -> 'engine'; None for modules outside adallava's layered packages."""
    parts = module.split(".")
    if parts[0] != "adallava" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return parts[1]


def back_edges() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if len(relative.parts) < 2:  # adallava/__init__.py: the lazy public names
            continue
        here = relative.parts[0]
        for name in sorted(imported_modules(path.read_text(), package_of(path))):
            there = top_package(name)
            if there is None or there == here:
                continue
            if LAYERS[there] > LAYERS[here] or (
                LAYERS[there] == LAYERS[here] and (here, there) not in APP_EDGES
            ):
                found.append(
                    f"{relative} ({here}, layer {LAYERS[here]}) imports {name} (layer {LAYERS[there]})"
                )
    return found


def test_every_package_has_a_layer():
    # Bug caught: a new top-level package that the dependency rule silently ignores.
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"give these packages a layer: {sorted(packages - set(LAYERS))}"
    modules = {p.name for p in SRC.glob("*.py")}
    assert modules == {"__init__.py"}, f"modules outside the layered packages: {sorted(modules)}"


def test_dependencies_point_one_way():
    # Bug caught: a back edge (e.g. serve importing the CLI, data importing eval, the engine importing
    # an application) that makes a lower layer impossible to use, test or move without dragging a
    # higher one along.
    found = back_edges()
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_the_import_scanner_sees_lazy_and_relative_imports():
    # Bug caught: the rule test passing vacuously because function-level or relative imports are missed.
    source = "def f():\n    from adallava.eval import readers\n    from ..cli import main\n"
    source += "import adallava.serve\n"
    names = imported_modules(source, "adallava.data")
    assert {"adallava.eval.readers", "adallava.cli.main", "adallava.serve"} <= names
    assert top_package("adallava.cli.main") == "cli" and top_package("torch") is None


@pytest.mark.parametrize(
    "here,there,allowed",
    [("engine", "core", True), ("core", "engine", False), ("eval", "data", True), ("data", "eval", False),
     ("serve", "eval", False), ("cli", "serve", True), ("serve", "cli", False)],
)  # fmt: skip
def test_the_rule_itself(here, there, allowed):
    # Bug caught: a table edit that quietly allows a back edge (or forbids a forward one).
    ok = LAYERS[there] < LAYERS[here] or (here, there) in APP_EDGES
    assert ok == allowed
