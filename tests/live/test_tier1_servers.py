"""The client never waits for after-response callbacks: real servers, real clients.

Each server runs ``tests.apps.tier1`` in its own process. A callback that is *held*
blocks until the test releases it over HTTP, so "the response was complete while the
callback was still running" is a fact checked in order, not a race against a sleep.
"""

from __future__ import annotations

import http.client
import json
import time
import typing as t

import pytest
import requests

from tests.apps.tier1 import PAYLOAD
from tests.apps.tier1 import STREAM_CHUNKS
from tests.live.server import KEEP_ALIVE
from tests.live.server import LiveServer
from tests.live.server import SILENT_CLOSE
from tests.live.server import wait_until

pytestmark = pytest.mark.live

BODIES = {"plain": b"held\n", "stream": b"".join(STREAM_CHUNKS), "file": PAYLOAD}
#: Seconds the slow callback sleeps. A client that waited for it would take at least
#: this long; its answer in under half of it proves it did not, with room for a loaded
#: machine.
SLOW_CALLBACK = 5.0
#: Bound on a response whose callback is held. The callback runs until the test
#: releases it (up to 30 s), so a client that waited for it would time out (after
#: 10 s) instead of answering: the bound only has to be well above a prompt answer.
HELD_BOUND = 5.0


def assert_held_then_release(server: LiveServer, token: str) -> None:
    """The callback started and is still blocked; release it and see it finish."""
    started, done = server.out / f"{token}.started", server.out / f"{token}.done"
    assert wait_until(started.exists), f"the callback never started:\n{server.log()}"
    assert not done.exists()
    assert requests.get(server.url(f"/release/{token}"), timeout=10).ok
    assert wait_until(done.exists)
    assert done.read_text() == "released"


def test_client_does_not_wait_for_a_slow_callback(server: LiveServer, token: str) -> None:
    # When a view defers a callback that sleeps SLOW_CALLBACK seconds
    response, elapsed = server.get(f"/sleep/{token}?seconds={SLOW_CALLBACK}")

    # Then the whole response arrives well before the callback could have ended
    done = server.out / f"{token}.done"
    assert not done.exists()
    assert response.status_code == 200
    assert response.text == "deferred\n"
    assert elapsed < SLOW_CALLBACK / 2

    # And the callback still runs, on a callback thread
    assert wait_until(done.exists, timeout=SLOW_CALLBACK + 10), server.log()
    assert done.read_text().startswith("flask-afterward-callback-")


def test_sequential_requests_do_not_queue_behind_callbacks(server: LiveServer, token: str) -> None:
    # Given five requests in a row, each deferring a callback held until released
    # (more callbacks than the 4 callback threads, on gunicorn's single sync worker too)
    tokens = [f"{token}-{number}" for number in range(5)]
    started = time.perf_counter()
    for name in tokens:
        response, _ = server.get(f"/hold/{name}/plain")
        assert response.ok
    total = time.perf_counter() - started

    # Then all five were answered while every callback was still held
    done = [server.out / f"{name}.done" for name in tokens]
    assert not any(path.exists() for path in done)
    assert total < HELD_BOUND

    # And every callback ran once released
    for name in tokens:
        assert requests.get(server.url(f"/release/{name}"), timeout=10).ok
    assert wait_until(lambda: all(path.exists() for path in done), timeout=10), server.log()
    assert {path.read_text() for path in done} == {"released"}


def test_next_request_on_kept_alive_connection_is_not_delayed(
    server: LiveServer, token: str
) -> None:
    if server.kind in SILENT_CLOSE:
        pytest.skip("the server closes the connection without saying so")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        # Given a response whose callback is still running
        connection.request("GET", f"/hold/{token}/plain")
        first = connection.getresponse()
        assert first.read() == b"held\n"
        socket_after_first = connection.sock

        # When the client sends its next request on the same connection
        started = time.perf_counter()
        connection.request("GET", "/ready")
        second = connection.getresponse()
        assert second.read() == b"ready\n"
        elapsed = time.perf_counter() - started

        # Then it is answered at once, on the same connection where the server keeps it
        assert elapsed < HELD_BOUND
        if server.kind in KEEP_ALIVE:
            assert socket_after_first is not None
            assert connection.sock is socket_after_first
        assert not (server.out / f"{token}.done").exists()
    finally:
        connection.close()
    assert_held_then_release(server, token)


@pytest.mark.parametrize("shape", ["plain", "stream", "file"])
def test_http11_response_is_complete_while_its_callback_runs(
    server: LiveServer, token: str, shape: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        started = time.perf_counter()
        connection.request("GET", f"/hold/{token}/{shape}")
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
    finally:
        connection.close()

    assert response.status == 200
    assert body == BODIES[shape]
    if shape == "stream" and server.kind not in SILENT_CLOSE:
        assert response.getheader("Transfer-Encoding") == "chunked"
    assert elapsed < HELD_BOUND
    assert_held_then_release(server, token)


@pytest.mark.parametrize("shape", ["plain", "stream", "file"])
def test_http10_connection_closes_while_its_callback_runs(
    server: LiveServer, token: str, shape: str
) -> None:
    # HTTP/1.0 without keep-alive: the response ends when the server closes the
    # connection, which servers do only after close() on the response returned.
    response = server.get_http10(f"/hold/{token}/{shape}")

    assert response.status == 200
    assert response.body == BODIES[shape]
    assert response.elapsed < HELD_BOUND
    assert_held_then_release(server, token)


def test_failing_callback_is_logged_and_never_reaches_the_server(
    server: LiveServer, token: str
) -> None:
    response, _ = server.get(f"/fail/{token}")
    assert response.status_code == 200

    # The next callback of the request still ran
    assert wait_until((server.out / f"{token}-next.done").exists), server.log()
    # The failure went to the flask_afterward logger, with its traceback
    app_log = server.app_log()
    assert f"callback {token} failed on purpose" in app_log
    assert "ERROR flask_afterward.callbacks After-response callback" in app_log
    assert "Traceback" in app_log
    # and not to the server, which still answers
    assert "failed on purpose" not in server.log()
    assert server.get("/ready")[0].ok


def test_after_response_hook_sees_what_the_server_saw(server: LiveServer, token: str) -> None:
    response, _ = server.get(f"/echo/{token}")
    assert response.status_code == 201

    path = f"/echo/{token}"
    audit_log = server.out / "responses.jsonl"
    assert wait_until(lambda: audit_log.exists() and path in audit_log.read_text())
    [info] = [line for line in _json_lines(audit_log.read_text()) if line["path"] == path]
    assert info["method"] == "GET"
    assert info["endpoint"] == "echo"
    assert info["status_code"] == 201
    assert info["remote_addr"] == "127.0.0.1"
    assert 0 <= info["duration"] < 5


def _json_lines(text: str) -> list[dict[str, t.Any]]:
    return [json.loads(line) for line in text.splitlines()]
