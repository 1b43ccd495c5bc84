"""uWSGI, where Python threads only run with ``--enable-threads``.

uWSGI with threads is in the server matrix of ``test_tier1_servers.py``. pyuwsgi is
in the ``tests`` extra; without it these tests skip locally and fail under CI
(:func:`tests.live.conftest.need_server`).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.live.conftest import StartServer
from tests.live.server import wait_until

pytestmark = pytest.mark.live

CALLBACK_THREAD = "flask-afterward-callback-"


def test_without_threads_callbacks_run_inline_and_it_warns_once(
    start_server: StartServer, token: str
) -> None:
    server = start_server("uwsgi")

    for number in range(2):
        response, _ = server.get(f"/sleep/{token}-{number}?seconds=0")
        assert response.ok

    done = [server.out / f"{token}-{number}.done" for number in range(2)]
    assert wait_until(lambda: all(path.exists() for path in done)), server.log()
    # Nothing is lost: the callbacks ran, in the worker itself, not on a pool thread
    assert not any(path.read_text().startswith(CALLBACK_THREAD) for path in done)
    assert server.app_log().count("uWSGI runs without --enable-threads") == 1


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 failed"), ("", "1 skipped")])
def test_without_pyuwsgi_these_tests_skip_locally_and_fail_under_ci(
    tmp_path: pathlib.Path, ci: str, outcome: str
) -> None:
    # Given an interpreter where pyuwsgi cannot be imported
    (tmp_path / "pyuwsgi.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CI": ci}

    # When it runs a uWSGI test of this file, with CI set or not
    root = pathlib.Path(__file__).parents[2]
    name = test_without_threads_callbacks_run_inline_and_it_warns_once.__name__
    test = f"{pathlib.Path(__file__).relative_to(root)}::{name}"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", test],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then it skips locally, and under CI it fails saying what to install
    assert outcome in run.stdout, run.stdout + run.stderr
    if ci:
        assert run.returncode != 0
        assert "CI must run the uwsgi tests: install pyuwsgi" in run.stdout
    else:
        assert run.returncode == 0
