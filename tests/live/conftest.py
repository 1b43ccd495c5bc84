from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import uuid

import pytest

from tests.live.server import LiveServer
from tests.live.server import SERVERS

StartServer = cabc.Callable[..., LiveServer]

try:
    import pyuwsgi  # noqa: F401
except ImportError:
    HAS_UWSGI = False
else:
    HAS_UWSGI = True

#: pyuwsgi is in the ``tests`` extra. A local run without it skips the uWSGI cases; CI
#: (``CI=true``) must not silently skip them, so there it fails.
if not HAS_UWSGI and os.environ.get("CI"):
    raise RuntimeError("CI must run the uWSGI tests: install pyuwsgi (the tests extra).")
UWSGI = pytest.mark.skipif(not HAS_UWSGI, reason="pyuwsgi is not installed")


@pytest.fixture(scope="module", params=[*SERVERS, pytest.param("uwsgi-threads", marks=UWSGI)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> cabc.Iterator[LiveServer]:
    """One server of each kind, shared by a module's tests (side effects are per token).

    Its ``after_response`` audit hook is on, so every request goes through the full
    middleware; the servers of :func:`start_server` run without it.
    """
    kind: str = request.param
    with LiveServer(kind, tmp_path_factory.mktemp(kind), audit=True) as live:
        yield live


@pytest.fixture
def start_server(tmp_path: pathlib.Path) -> cabc.Iterator[StartServer]:
    """Start a server of your own, ``start_server(kind, **config)``; stopped after the test."""
    started: list[LiveServer] = []

    def start(kind: str, **config: object) -> LiveServer:
        out = tmp_path / f"{kind}-{len(started)}"
        out.mkdir()
        live = LiveServer(kind, out, config=config)
        started.append(live)
        return live.__enter__()

    yield start
    for live in started:
        live.__exit__()


@pytest.fixture
def token() -> str:
    """A name for one request's side effects, unique across a shared server."""
    return uuid.uuid4().hex[:12]
