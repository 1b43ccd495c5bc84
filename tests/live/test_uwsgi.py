"""uWSGI, where Python threads only run with ``--enable-threads``.

uWSGI with threads is in the server matrix of ``test_tier1_servers.py``. pyuwsgi is
not a test dependency (it comes with the ``bench`` extra); without it these tests skip.
"""

from __future__ import annotations

import pytest

from tests.live.conftest import StartServer
from tests.live.server import wait_until

pytest.importorskip("pyuwsgi")

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
