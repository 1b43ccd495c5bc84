"""Pending callbacks finish when a real server is told to stop; what cannot is counted.

Each test starts its own server, since stopping it is the point.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.live.conftest import StartServer
from tests.live.server import python_env
from tests.live.server import REPO
from tests.live.server import wait_until

pytestmark = pytest.mark.live

UNFINISHED = "after-response callbacks did not finish within the"
#: Seconds the callback of the first test sleeps: the stop must come while it runs.
CALLBACK = 3.0


@pytest.mark.parametrize("kind", ["gunicorn-sync", "gunicorn-gthread", "waitress"])
def test_sigterm_right_after_a_response_lets_its_callback_finish(
    start_server: StartServer, kind: str, token: str
) -> None:
    # Given a server that just answered a request whose callback takes a while
    server = start_server(kind)
    response, elapsed = server.get(f"/sleep/{token}?seconds={CALLBACK}")
    assert response.ok
    assert elapsed < CALLBACK / 2

    # When it is told to stop at once, while the callback still runs
    assert not (server.out / f"{token}.done").exists()
    server.signal_and_wait()

    # Then the callback finished before the process ended
    assert (server.out / f"{token}.done").exists(), server.log()
    assert UNFINISHED not in server.app_log()


def test_sigterm_lets_a_running_callback_finish_on_the_dev_server(
    start_server: StartServer, token: str
) -> None:
    # The dev server writes the response from its handler thread, then calls close().
    # A SIGTERM landing between the two ends the process before close() hands the
    # callbacks over (the server has no graceful stop), so here the callback is
    # already running when the signal comes.
    server = start_server("werkzeug")
    response, _ = server.get(f"/sleep/{token}?seconds=1")
    assert response.ok
    assert wait_until((server.out / f"{token}.started").exists)

    assert server.signal_and_wait() == 128 + signal.SIGTERM

    assert (server.out / f"{token}.done").exists(), server.log()
    assert UNFINISHED not in server.app_log()


@pytest.mark.parametrize("kind", ["gunicorn-sync", "waitress"])
def test_sigterm_logs_how_many_callbacks_outlived_the_shutdown_timeout(
    start_server: StartServer, kind: str, token: str
) -> None:
    # Given a callback that will not end on its own, and a short shutdown timeout
    server = start_server(kind, AFTERWARD_SHUTDOWN_TIMEOUT=0.2)
    response, _ = server.get(f"/hold/{token}/plain")
    assert response.ok
    assert wait_until((server.out / f"{token}.started").exists)

    # When the server is told to stop
    server.signal_and_wait(timeout=10)

    # Then it stops after the timeout and says how much work it left behind
    assert not (server.out / f"{token}.done").exists()
    assert f"WARNING flask_afterward.pool 1 {UNFINISHED} 0.2 s" in server.app_log()


def test_interpreter_exit_lets_a_pending_callback_finish(tmp_path: pathlib.Path) -> None:
    # A script that serves one request with the test client, then simply ends.
    script = textwrap.dedent(
        """
        from tests.apps.tier1 import create_app

        response = create_app().test_client().get("/sleep/exit?seconds=0.5", buffered=True)
        assert response.status_code == 200
        """
    )
    env = python_env(TIER1_OUT=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True, timeout=30)
    assert (tmp_path / "exit.done").exists()


def test_exit_while_the_pool_starts_its_threads_still_waits_for_the_callback(
    tmp_path: pathlib.Path,
) -> None:
    # A server thread hands the first callback of the process to the pool just as the
    # main thread begins to exit (a SIGTERM on the dev server). Starting the pool's
    # threads is slowed down here to make that moment wide enough to hit every time.
    script = textwrap.dedent(
        """
        import sys
        import threading
        import time

        from tests.apps.tier1 import create_app

        starting = threading.Event()
        start = threading.Thread.start

        def slow_start(thread):
            if thread.name.startswith("flask-afterward-callback-"):
                starting.set()
                time.sleep(0.3)
            start(thread)

        threading.Thread.start = slow_start
        app = create_app()

        def serve():
            app.test_client().get("/sleep/race?seconds=0.2", buffered=True)

        threading.Thread(target=serve, daemon=True).start()
        assert starting.wait(10)
        sys.exit(0)
        """
    )
    env = python_env(TIER1_OUT=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True, timeout=30)
    assert (tmp_path / "race.done").exists()
