"""Accepted views and the jobs API through real servers and a real HTTP client.

``tests.apps.accepted`` runs under gunicorn (gthread) and waitress, with its
in-process workers and a SQLite store in the server's directory. The test process
opens the same SQLite file to look at what was stored (secrets, row counts).
"""

from __future__ import annotations

import collections.abc as cabc
import json
import pathlib
import sqlite3
import sys
import time
import typing as t

import pytest
import requests

from flask_afterward.records import JobRecord
from flask_afterward.stores.sqlite import SqliteStore
from tests.apps import accepted
from tests.live.server import LiveServer

pytestmark = pytest.mark.live

#: Headers the server adds on its own, not part of the view's response.
SERVER_HEADERS = frozenset({"date", "server", "content-length", "connection", "keep-alive"})
#: Request threads of each server (gunicorn --threads, waitress threads).
THREADS = 4
#: Seconds the slow view takes. A client that waited for it would take at least this
#: long; a 202 in under half of it proves it did not, with room for a loaded machine.
SLOW_VIEW = 5


class AcceptedServer(LiveServer):
    """A :class:`LiveServer` running ``tests.apps.accepted`` instead of the tier-1 app."""

    def __init__(self, kind: str, out: pathlib.Path, **config: object) -> None:
        super().__init__(kind, out)
        del self.env["TIER1_OUT"]
        self.env["ACCEPTED_OUT"] = str(out)
        for key, value in config.items():
            self.env[f"ACCEPTED_{key}"] = json.dumps(value)

    def _command(self, fd: int) -> list[str]:
        if self.kind == "waitress":
            return [sys.executable, "-m", "tests.apps.accepted", "waitress", str(fd), str(THREADS)]
        if self.kind == "gunicorn-gthread":
            return [
                *[sys.executable, "-m", "gunicorn", "--workers", "1", "--graceful-timeout", "5"],
                *["--worker-class", "gthread", "--threads", str(THREADS), "--bind", f"fd://{fd}"],
                "tests.apps.accepted:create_server_app()",
            ]
        raise ValueError(f"unknown server {self.kind!r}")

    def record(self, job_id: str) -> JobRecord | None:
        """The job as the server stored it."""
        store = SqliteStore(str(self.db_path))
        try:
            return store.get(job_id)
        finally:
            store.close()

    @property
    def db_path(self) -> pathlib.Path:
        return self.out / "instance" / "afterward.sqlite3"


@pytest.fixture(scope="module", params=["gunicorn-gthread", "waitress"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> cabc.Iterator[AcceptedServer]:
    kind: str = request.param
    with AcceptedServer(kind, tmp_path_factory.mktemp(f"accepted-{kind}")) as live:
        yield live


@pytest.fixture
def http() -> cabc.Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def accept(
    server: AcceptedServer, http: requests.Session, path: str, **kwargs: t.Any
) -> dict[str, t.Any]:
    response = http.post(server.url(path), timeout=10, **kwargs)
    assert response.status_code == 202, response.text
    body: dict[str, t.Any] = response.json()
    return body


def poll(
    server: AcceptedServer,
    http: requests.Session,
    url: str,
    until: cabc.Callable[[dict[str, t.Any]], bool],
    timeout: float = 15.0,
    **kwargs: t.Any,
) -> dict[str, t.Any]:
    """Poll a job's status URL until ``until(status)``; fail at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(server.url(url), timeout=10, **kwargs)
        assert response.status_code == 200, response.text
        status: dict[str, t.Any] = response.json()
        if until(status):
            return status
        assert time.monotonic() < deadline, f"job still {status['state']}:\n{server.log()}"
        time.sleep(0.05)


def finished(status: dict[str, t.Any]) -> bool:
    return status["state"] in {"succeeded", "failed", "cancelled"}


def assert_problem(response: requests.Response, status: int) -> dict[str, t.Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, t.Any] = response.json()
    assert problem["status"] == status
    return problem


def test_202_arrives_before_the_view_ran_and_the_result_is_its_response(
    server: AcceptedServer, http: requests.Session
) -> None:
    # When a client posts to a view that takes SLOW_VIEW seconds
    started = time.perf_counter()
    url = server.url(f"/slow?seconds={SLOW_VIEW}&tag=x")
    response = http.post(url, json={"n": 1}, timeout=10)
    elapsed = time.perf_counter() - started

    # Then 202 arrives well before the view could have ended
    assert response.status_code == 202
    assert elapsed < SLOW_VIEW / 2
    body = response.json()
    assert response.headers["Location"] == body["status_url"]
    assert response.headers["Retry-After"] == "1"
    assert set(body) >= {"id", "state", "status_url", "result_url"}
    # (and the view is indeed still running or yet to run)
    now = http.get(server.url(body["status_url"]), timeout=10).json()
    assert not finished(now), now

    # And polling reaches succeeded, and the result URL answers with the view's response
    status = poll(server, http, body["status_url"], finished)
    assert status["state"] == "succeeded"
    result = http.get(server.url(body["result_url"]), timeout=10)
    assert result.status_code == 201
    assert result.json() == {
        "method": "POST",
        "json": {"n": 1},
        "args": {"seconds": [str(SLOW_VIEW)], "tag": ["x"]},
        "remote_addr": "127.0.0.1",
        "job": body["id"],
    }
    record = server.record(body["id"])
    assert record is not None and record.result is not None
    stored = json.loads(record.result)
    view_headers = sorted((name.lower(), value) for name, value in stored["headers"])
    served = sorted(
        (name.lower(), value)
        for name, value in result.headers.items()
        if name.lower() not in SERVER_HEADERS
    )
    assert served == view_headers
    assert ("x-report", "ready") in served
    assert ("set-cookie", "report=built; Path=/") in served
    assert record.finished_at is not None and record.started_at is not None
    assert record.finished_at - record.started_at >= SLOW_VIEW


def test_abort_404_is_404_and_an_exception_a_500_problem(
    server: AcceptedServer, http: requests.Session
) -> None:
    missing = accept(server, http, "/missing")
    boom = accept(server, http, "/boom")
    poll(server, http, missing["status_url"], finished)
    poll(server, http, boom["status_url"], finished)

    not_found = http.get(server.url(missing["result_url"]), timeout=10)
    problem = assert_problem(http.get(server.url(boom["result_url"]), timeout=10), 500)

    assert not_found.status_code == 404
    assert "no such report" in not_found.text
    assert problem["title"] == "Job failed"
    assert "RuntimeError: the report exploded" in problem["detail"]


def test_events_stream_progress_as_it_happens_and_ends(
    server: AcceptedServer, http: requests.Session
) -> None:
    body = accept(server, http, "/steps?steps=10&pause=0.1")

    events: list[tuple[float, dict[str, t.Any]]] = []
    with http.get(server.url(body["events_url"]), stream=True, timeout=(5, 10)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append((time.monotonic(), json.loads(line.removeprefix("data: "))))
    # The loop ended: the server closed the stream when the job finished.

    progress = [event["progress"] for _, event in events if event["progress"] is not None]
    assert len(progress) >= 3
    assert progress == sorted(progress)
    assert len(set(progress)) >= 3
    assert events[-1][1]["state"] == "succeeded"
    # Events arrived as they happened, not all at the end.
    first_running = next(at for at, event in events if event["state"] == "running")
    assert events[-1][0] - first_running > 0.3


def test_abandoned_event_streams_do_not_hold_the_servers_threads(
    server: AcceptedServer, http: requests.Session
) -> None:
    # Given as many open streams as the server has threads, of a job that stays queued
    body = accept(server, http, "/parked")
    streams = []
    for _ in range(THREADS):
        stream = requests.get(server.url(body["events_url"]), stream=True, timeout=10)
        assert next(stream.iter_lines()) == b"retry: 1000"
        streams.append(stream)

    # When their clients go away
    for stream in streams:
        stream.close()

    # Then the server answers again, well before the streams' 60 s bound
    started = time.perf_counter()
    response = requests.get(server.url("/ready"), timeout=30)
    assert response.status_code == 200
    assert time.perf_counter() - started < 10


def test_cancel_of_a_queued_job(server: AcceptedServer, http: requests.Session) -> None:
    body = accept(server, http, "/parked")

    cancel = http.delete(server.url(body["status_url"]), timeout=10)

    assert cancel.status_code == 200
    assert cancel.json()["state"] == "cancelled"
    assert_problem(http.get(server.url(body["result_url"]), timeout=10), 409)
    record = server.record(body["id"])
    assert record is not None and record.attempts == 0


def test_cancel_of_a_running_job_stops_it_at_its_next_progress(
    server: AcceptedServer, http: requests.Session
) -> None:
    body = accept(server, http, "/steps?steps=400&pause=0.05")
    poll(server, http, body["status_url"], lambda status: (status["progress"] or 0) > 0)

    cancel = http.delete(server.url(body["status_url"]), timeout=10)
    status = poll(server, http, body["status_url"], finished)

    assert cancel.status_code == 202
    assert status["state"] == "cancelled"
    assert status["progress"] < 0.5
    assert_problem(http.get(server.url(body["result_url"]), timeout=10), 409)


def test_another_client_gets_404(server: AcceptedServer, http: requests.Session) -> None:
    body = accept(server, http, "/slow?seconds=0")
    poll(server, http, body["status_url"], finished)
    base = f"/afterward/jobs/{body['id']}"

    with requests.Session() as other:
        for response in (
            other.get(server.url(base), timeout=10),
            other.get(server.url(f"{base}/result"), timeout=10),
            other.get(server.url(f"{base}/events?key=guess"), timeout=10),
            other.delete(server.url(base), timeout=10),
        ):
            assert_problem(response, 404)
        assert_problem(other.get(server.url("/afterward/jobs/bad%20id%00"), timeout=10), 404)
    assert http.get(server.url(body["result_url"]), timeout=10).status_code == 201


def test_authorize_hook_refusal_is_403(server: AcceptedServer, http: requests.Session) -> None:
    # The app mounted at /mounted decides access with AFTERWARD_AUTHORIZE.
    body = accept(server, http, "/mounted/slow?seconds=0")
    reader = {accepted.ROLE_HEADER: "reader"}

    assert body["status_url"].startswith("/mounted/afterward/jobs/")
    assert "key=" not in body["status_url"]
    assert_problem(http.get(server.url(body["status_url"]), timeout=10), 403)
    assert_problem(http.delete(server.url(body["status_url"]), headers=reader, timeout=10), 403)
    poll(server, http, body["status_url"], finished, headers=reader)
    result = http.get(server.url(body["result_url"]), headers=reader, timeout=10)
    assert result.status_code == 201


def test_before_request_authentication_and_blueprint_run_in_the_worker(
    server: AcceptedServer, http: requests.Session
) -> None:
    refused = http.post(server.url("/api/v1/items/5"), timeout=10)
    token = {"Authorization": accepted.API_TOKEN}
    body = accept(server, http, "/api/v1/items/5", headers=token)
    poll(server, http, body["status_url"], finished)

    assert refused.status_code == 401
    result = http.get(server.url(body["result_url"]), timeout=10).json()
    assert result == {
        "item": 5,
        "client": "api-client",
        "path": "/api/v1/items/5",
        "url": server.url("/api/v1/items/5"),
    }
    record = server.record(body["id"])
    assert record is not None
    assert record.secrets is None
    assert "s3cret-token" not in record.payload


def test_flask_login_user_runs_the_job_and_the_cookie_is_wiped(
    server: AcceptedServer, http: requests.Session
) -> None:
    assert http.post(server.url("/me"), timeout=10).status_code == 401
    # A permanent session: Flask sends its cookie back with every response.
    data = {"username": "grace", "permanent": "1"}
    login = http.post(server.url("/login"), data=data, timeout=10)
    assert login.status_code == 200
    cookie = http.cookies["session"]

    body = accept(server, http, "/me")
    poll(server, http, body["status_url"], finished)

    result = http.get(server.url(body["result_url"]), timeout=10)
    assert result.json() == {"user": "grace", "in_job": True}
    record = server.record(body["id"])
    assert record is not None
    assert record.secrets is None
    assert cookie not in record.payload and "Cookie" not in record.payload
    assert cookie not in (record.result or "")


def test_async_view_and_chunked_body(server: AcceptedServer, http: requests.Session) -> None:
    async_job = accept(server, http, "/async")
    chunks = iter([b'{"chunked":', b" true}"])
    chunked = accept(
        server, http, "/slow?seconds=0", data=chunks, headers={"Content-Type": "application/json"}
    )
    poll(server, http, async_job["status_url"], finished)
    poll(server, http, chunked["status_url"], finished)

    assert http.get(server.url(async_job["result_url"]), timeout=10).json() == {
        "async": True,
        "path": "/async",
    }
    assert http.get(server.url(chunked["result_url"]), timeout=10).json()["json"] == {
        "chunked": True
    }


def _rows(server: AcceptedServer) -> int:
    with sqlite3.connect(server.db_path) as connection:
        count: int = connection.execute("SELECT count(*) FROM afterward_jobs").fetchone()[0]
    connection.close()
    return count


def test_job_and_result_are_gone_after_their_ttl(
    server: AcceptedServer, http: requests.Session
) -> None:
    store = SqliteStore(str(server.db_path))
    try:
        store.prune(time.time())
        rows = _rows(server)
        body = accept(server, http, "/short-lived")
        poll(server, http, body["status_url"], finished)
        assert http.get(server.url(body["result_url"]), timeout=10).text == "short-lived\n"
        assert _rows(server) == rows + 1

        deadline = time.monotonic() + 10
        while http.get(server.url(body["status_url"]), timeout=10).status_code != 404:
            assert time.monotonic() < deadline, "the job outlived its TTL"
            time.sleep(0.05)

        assert_problem(http.get(server.url(body["result_url"]), timeout=10), 404)
        store.prune(time.time())
        assert _rows(server) == rows
    finally:
        store.close()
