"""flask-afterward uses Flask's public API only, so a Flask release cannot break it.

Flask 3.2 merged ``RequestContext`` into ``AppContext`` and deprecated
``flask.globals.request_ctx``; code that subclassed the one and imported the other
broke (issue 12). On Flask 3.0 and 3.1 nothing warns about such imports, so this
test is the guard there; on Flask's main branch ``tests/flask_source.sh`` is.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import flask_afterward

SOURCE = pathlib.Path(flask_afterward.__file__).parent
#: Flask modules that hold internals: contexts and the context variables behind them.
INTERNAL = frozenset({"flask.globals", "flask.ctx"})


def internal_imports(source: str) -> list[str]:
    """The imports of Flask internals in ``source``, as ``"line N: module"``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in INTERNAL:
            found.append(f"line {node.lineno}: {node.module}")
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name in INTERNAL]
            found += [f"line {node.lineno}: {name}" for name in names]
    return found


@pytest.mark.parametrize(
    "path", sorted(SOURCE.rglob("*.py")), ids=lambda path: str(path.relative_to(SOURCE))
)
def test_module_does_not_import_flask_internals(path: pathlib.Path) -> None:
    assert internal_imports(path.read_text()) == []


def test_the_patterns_that_broke_on_flask_3_2_are_found() -> None:
    source = (
        "import typing as t\n"
        "from flask import request\n"
        "from flask.globals import request_ctx\n"
        "import flask.ctx\n"
        "if t.TYPE_CHECKING:\n"
        "    from flask.ctx import RequestContext\n"
    )
    assert internal_imports(source) == [
        "line 3: flask.globals",
        "line 4: flask.ctx",
        "line 6: flask.ctx",
    ]
