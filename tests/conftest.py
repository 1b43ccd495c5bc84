from __future__ import annotations

import collections.abc as cabc
import os
import pathlib

import pytest
from flask import Flask

from flask_afterward import Afterward
from tests.apps.jobs_processes import Processes
from tests.apps.jobs_processes import store_url


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


@pytest.fixture
def processes(tmp_path: pathlib.Path) -> cabc.Iterator[Processes]:
    """Processes of ``tests.apps.jobs`` sharing one SQLite store, stopped after the test."""
    procs = Processes(tmp_path, AFTERWARD_STORE=store_url(tmp_path))
    try:
        yield procs
    finally:
        procs.close()
