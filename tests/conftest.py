from __future__ import annotations

import collections.abc as cabc
import os
import pathlib

import pytest
from flask import Flask

from flask_afterward import Afterward


@pytest.fixture(autouse=True)
def _reset_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AFTERWARD_* or FLASK_* variable from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith(("AFTERWARD_", "FLASK_")):
            monkeypatch.delenv(key)


@pytest.fixture
def app(tmp_path: pathlib.Path) -> Flask:
    app = Flask("test_app", instance_path=str(tmp_path / "instance"))
    app.config.update(TESTING=True, SECRET_KEY="test", AFTERWARD_STORE="memory://")
    return app


@pytest.fixture
def afterward(app: Flask) -> cabc.Iterator[Afterward]:
    afterward = Afterward(app)
    yield afterward
    afterward.close(app, timeout=5)
