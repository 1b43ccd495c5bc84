"""The package's imports read one way, from the leaf modules up.

Each module of ``flask_afterward`` has a layer; at run time it may import only modules
of lower layers, or of its own layer without a circle. Imports under
``if t.TYPE_CHECKING:`` are for annotations and may point anywhere.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import flask_afterward

ROOT = pathlib.Path(flask_afterward.__file__).parent

#: Lowest first. A new module gets a layer here, or the test fails.
LAYERS: dict[str, int] = {
    "errors": 1,
    "records": 1,
    "config": 2,
    "signals": 2,
    "serializers": 2,
    "context": 2,
    "pool": 2,
    "jobs": 3,
    "state": 4,
    "stores": 4,
    "stores.base": 4,
    "stores.memory": 4,
    "stores.sqlite": 4,
    "stores.redis": 4,
    "callbacks": 5,
    "runner": 5,
    "worker": 5,
    "tasks": 5,
    "executors": 5,
    "replay": 5,
    "views": 6,
    "dashboard": 6,
    "dashboard.access": 6,
    "dashboard.pages": 6,
    "dashboard.actions": 6,
    "dashboard.live": 6,
    "cli": 6,
    "supervisor": 6,
    "extension": 7,
    "__init__": 8,
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports outside ``if TYPE_CHECKING`` blocks."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else []
    if not package:
        package = name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package[: len(package) - (child.level - 1)]
                target = ".".join([*base, child.module] if child.module else base)
                # "from . import access" imports the submodule, not its package.
                submodules = [f"{target}.{a.name}".strip(".") for a in child.names]
                candidates = submodules if child.module is None else [target, *submodules]
                found.update(c for c in candidates if c in modules)
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _runtime_imports(path, set(paths)) for name, path in paths.items()}


def test_every_module_has_a_layer() -> None:
    assert set(_graph()) - set(LAYERS) == set()


def test_modules_import_only_lower_layers_or_their_own() -> None:
    upward = [
        f"{name} (layer {LAYERS[name]}) imports {target} (layer {LAYERS[target]})"
        for name, targets in _graph().items()
        for target in targets
        if LAYERS.get(target, 0) > LAYERS.get(name, 0)
    ]
    assert upward == []


def test_no_module_imports_itself_in_a_circle() -> None:
    graph = _graph()
    circles: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        for target in sorted(graph.get(name, ())):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif len(path) < len(graph):
                walk(target, [*path, target])

    for name in graph:
        walk(name, [name])
    assert circles == []


def test_importing_the_package_imports_no_optional_engine() -> None:
    # A fresh interpreter: this one may have imported anything already.
    code = (
        "import sys, flask_afterward\n"
        "loaded = [m for m in ('celery', 'rq', 'redis', 'flask_afterward.dashboard')"
        " if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
