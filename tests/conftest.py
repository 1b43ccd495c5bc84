from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import socket

import pytest
from flask import Flask

from flask_afterward import Afterward
from tests import redis_server
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


@pytest.fixture(scope="session", autouse=True)
def _redis_server_session() -> cabc.Iterator[None]:
    """Stop the session's redis-server (started on first use), if a test started it."""
    yield
    redis_server.stop()


def _is_redis_case(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        isinstance(value, str) and value.startswith(("redis://", "rediss://"))
        for value in callspec.params.values()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tier-2 cases that run on Redis (``-m redis`` / ``-m "not redis"``)."""
    for item in items:
        if _is_redis_case(item):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(autouse=True)
def _empty_redis(request: pytest.FixtureRequest) -> None:
    """A tier-2 test on Redis (its ``app`` opens :data:`redis_server.URL`) starts with
    the server up and its database empty."""
    if _is_redis_case(request.node):
        redis_server.server()
        with socket.create_connection(("127.0.0.1", redis_server.PORT), timeout=5) as sock:
            sock.sendall(b"FLUSHDB\r\n")
            assert sock.recv(64).startswith(b"+OK")
