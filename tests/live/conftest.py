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


def need_server(kind: str) -> None:
    """Skip a test whose server cannot start here; under CI, fail it instead.

    pyuwsgi is in the ``tests`` extra. A local run without it skips the uWSGI cases,
    but CI (``CI`` set, as CI services do) must not report them as skipped and never
    run them, so there each of them fails and says what to install.
    """
    if HAS_UWSGI or not kind.startswith("uwsgi"):
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI must run the {kind} tests: install pyuwsgi (the tests extra).")
    pytest.skip("pyuwsgi is not installed")


@pytest.fixture(scope="module", params=[*SERVERS, "uwsgi-threads"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> cabc.Iterator[LiveServer]:
    """One server of each kind, shared by a module's tests (side effects are per token).

    Its ``after_response`` audit hook is on, so every request goes through the full
    middleware; the servers of :func:`start_server` run without it.
    """
    kind: str = request.param
    need_server(kind)
    with LiveServer(kind, tmp_path_factory.mktemp(kind), audit=True) as live:
        yield live


@pytest.fixture
def start_server(tmp_path: pathlib.Path) -> cabc.Iterator[StartServer]:
    """Start a server of your own, ``start_server(kind, **config)``; stopped after the test."""
    started: list[LiveServer] = []

    def start(kind: str, **config: object) -> LiveServer:
        need_server(kind)
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
