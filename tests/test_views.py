"""Accepted views and the jobs HTTP API, through the Flask test client.

The app is ``tests.apps.accepted`` with no in-process workers: a test runs the jobs
itself (``run_burst``, or a worker in a thread), so it sees every state on purpose.
These tests prove behaviour, not that the client did not wait: that is
``tests/live/test_accepted_live.py``, with real servers.
"""

from __future__ import annotations

import collections.abc as cabc
import io
import json
import pathlib
import sqlite3
import threading
import time
import typing as t
import urllib.parse

import flask
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.checks import response_schema_conformance
from werkzeug.datastructures import MultiDict
from werkzeug.test import TestResponse
from werkzeug.wrappers import Request

from flask_afterward import replay
from flask_afterward import serializers
from flask_afterward import State
from flask_afterward import views
from flask_afterward.errors import ConfigurationError
from flask_afterward.errors import JobCancelled
from flask_afterward.records import JobRecord
from flask_afterward.views import job_urls
from tests.apps import accepted
from tests.apps.accepted import afterward
from tests.tier2 import run_burst
from tests.tier2 import store_of
from tests.tier2 import worker_for

MEMORY = "memory://"
SQLITE = "sqlite:///afterward.sqlite3"
TOKEN = {"Authorization": accepted.API_TOKEN}


@pytest.fixture
def make_app(tmp_path: pathlib.Path) -> cabc.Iterator[cabc.Callable[..., Flask]]:
    """``make_app(**config)``: the accepted app, no workers, closed after the test."""
    apps: list[Flask] = []

    def make(**config: object) -> Flask:
        config = {"TESTING": True, "AFTERWARD_STORE": MEMORY, "AFTERWARD_WORKERS": 0, **config}
        app = accepted.create_app(tmp_path / f"app{len(apps)}", **config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        afterward.close(app, timeout=5)


@pytest.fixture
def app(make_app: cabc.Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def record_of(app: Flask, job_id: str) -> JobRecord:
    record = store_of(app).get(job_id)
    assert record is not None, f"job {job_id} is gone"
    return record


def run_jobs(app: Flask) -> None:
    run_burst(app, afterward)


def wait_for(predicate: cabc.Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def assert_problem(response: TestResponse, status: int) -> dict[str, t.Any]:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem: dict[str, t.Any] = response.get_json(force=True)
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    return problem


# The 202 answer


def test_accepted_view_answers_202_with_links_and_does_not_run_the_view(
    app: Flask, client: FlaskClient
) -> None:
    response = client.post("/slow?seconds=0", json={"n": 1})

    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"id", "state", "status_url", "result_url", "events_url"}
    assert body["state"] == "queued"
    assert response.headers["Location"] == body["status_url"]
    assert response.headers["Retry-After"] == "1"
    assert body["status_url"].startswith(f"/afterward/jobs/{body['id']}?key=")
    assert body["result_url"].startswith(f"/afterward/jobs/{body['id']}/result?key=")
    record = record_of(app, body["id"])
    assert record.task == "flask_afterward.accepted"
    assert record.state == State.QUEUED


def test_accepted_options_reach_the_job(app: Flask, client: FlaskClient) -> None:
    steps = client.post("/steps").get_json()
    short = client.post("/short-lived").get_json()
    client.post("/login", data={"username": "ada"})
    flaky = client.post("/flaky").get_json()

    steps_record = record_of(app, steps["id"])
    assert (steps_record.queue, steps_record.timeout, steps_record.max_retries) == ("steps", 60, 0)
    assert record_of(app, short["id"]).result_ttl == 1
    assert record_of(app, flaky["id"]).max_retries == 1


def test_jobs_api_follows_the_url_prefix_setting(make_app: cabc.Callable[..., Flask]) -> None:
    client = make_app(AFTERWARD_URL_PREFIX="/api/jobs-api").test_client()

    body = client.post("/slow?seconds=0").get_json()

    assert body["status_url"].startswith("/api/jobs-api/jobs/")
    assert client.get(body["status_url"]).status_code == 200
    assert client.get("/api/jobs-api/openapi.json").get_json()["servers"] == [
        {"url": "/api/jobs-api"}
    ]


def test_without_secret_key_nothing_is_enqueued_that_nobody_could_follow(
    make_app: cabc.Callable[..., Flask],
) -> None:
    app = make_app(SECRET_KEY=None)

    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        app.test_client().post("/slow?seconds=0")

    assert store_of(app).list() == []


def test_authorize_hook_needs_no_secret_key(make_app: cabc.Callable[..., Flask]) -> None:
    app = make_app(SECRET_KEY=None, AFTERWARD_AUTHORIZE=accepted.authorize_by_role)

    assert app.test_client().post("/slow?seconds=0").status_code == 202


# Results


def test_result_is_202_with_retry_after_until_the_job_ran(app: Flask, client: FlaskClient) -> None:
    body = client.post("/slow?seconds=0").get_json()

    waiting = client.get(body["result_url"])
    assert waiting.status_code == 202
    assert waiting.headers["Retry-After"] == "1"
    assert waiting.get_json()["state"] == "queued"

    run_jobs(app)
    assert client.get(body["result_url"]).status_code == 201


def test_result_is_the_views_own_status_headers_and_body(app: Flask, client: FlaskClient) -> None:
    body = client.put(
        "/slow?seconds=0&tag=a&tag=%C3%A9",
        json={"title": "Quarterly ✓"},
        environ_base={"REMOTE_ADDR": "10.0.0.7"},
    ).get_json()
    run_jobs(app)

    result = client.get(body["result_url"])

    assert result.status_code == 201
    assert result.headers["X-Report"] == "ready"
    assert result.headers["Cache-Control"] == "no-store"
    assert result.headers["Set-Cookie"] == "report=built; Path=/"
    assert result.mimetype == "application/json"
    assert result.get_json() == {
        "method": "PUT",
        "json": {"title": "Quarterly ✓"},
        "args": {"seconds": ["0"], "tag": ["a", "é"]},
        "remote_addr": "10.0.0.7",
        "job": body["id"],
    }
    stored = t.cast(dict[str, t.Any], json.loads(record_of(app, body["id"]).result or "null"))
    assert sorted(map(tuple, stored["headers"])) == sorted(
        (name, value) for name, value in result.headers.items() if name != "Content-Length"
    )


def test_file_sent_by_the_view_is_the_result(app: Flask, client: FlaskClient) -> None:
    body = client.post("/report.pdf").get_json()
    run_jobs(app)

    result = client.get(body["result_url"])

    assert result.status_code == 200
    assert result.mimetype == "application/pdf"
    assert result.headers["Content-Disposition"] == "inline; filename=report.pdf"
    assert result.data == accepted.PDF


def test_status_describes_the_finished_job(app: Flask, client: FlaskClient) -> None:
    body = client.post("/slow?seconds=0").get_json()
    run_jobs(app)

    status = client.get(body["status_url"])

    assert status.status_code == 200
    job = status.get_json()
    assert job["id"] == body["id"]
    assert job["task"] == "flask_afterward.accepted"
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert job["error"] is None
    assert job["result_url"] == body["result_url"]
    for field in ("created_at", "started_at", "finished_at"):
        assert job[field].endswith("Z") and "T" in job[field]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_abort_404_in_the_view_is_404_at_the_result_url(app: Flask, client: FlaskClient) -> None:
    body = client.post("/missing").get_json()
    run_jobs(app)

    result = client.get(body["result_url"])

    assert result.status_code == 404
    assert b"no such report" in result.data
    assert client.get(body["status_url"]).get_json()["state"] == "succeeded"


def test_exception_in_the_view_is_a_500_problem(app: Flask, client: FlaskClient) -> None:
    body = client.post("/boom").get_json()
    run_jobs(app)

    problem = assert_problem(client.get(body["result_url"]), 500)
    status = client.get(body["status_url"]).get_json()

    assert problem["id"] == body["id"]
    assert "the report exploded" in problem["detail"]
    assert status["state"] == "failed"
    assert status["error"] == {"type": "RuntimeError", "message": "the report exploded"}


def test_traceback_is_shown_only_in_debug_mode(app: Flask, client: FlaskClient) -> None:
    body = client.post("/boom").get_json()
    run_jobs(app)

    app.debug = True
    error = client.get(body["status_url"]).get_json()["error"]

    assert "Traceback" in error["traceback"]
    assert "the report exploded" in error["traceback"]


def test_failed_task_keeps_its_http_exception_code(app: Flask, client: FlaskClient) -> None:
    with app.test_request_context():
        gone = accepted.gone.delay()
        lookalike = accepted.lookalike.delay()
        gone_urls, lookalike_urls = job_urls(gone.id), job_urls(lookalike.id)
    run_jobs(app)

    assert_problem(client.get(gone_urls["result_url"]), 410)
    assert_problem(client.get(lookalike_urls["result_url"]), 500)


def test_result_of_a_plain_task_is_json(app: Flask, client: FlaskClient) -> None:
    with app.test_request_context():
        job = accepted.parked.delay()
        urls = job_urls(job.id)
    run_jobs(app)

    assert client.get(urls["result_url"]).get_json() == {"id": job.id, "result": "parked"}


def test_accepted_response_follows_a_job_the_view_enqueued(app: Flask, client: FlaskClient) -> None:
    response = client.post("/parked")

    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == body["status_url"]
    assert record_of(app, body["id"]).task == "tests.apps.accepted.parked"
    assert client.get(body["status_url"]).get_json()["state"] == "queued"
    assert client.get(body["result_url"]).status_code == 202


# Who may see a job


MALFORMED_IDS = ["x", "A" * 21, "A" * 23, "AAAAAAAAAAAAAAAAAAAA%2B%2B", "%C3%A9" * 22, "..", "%00"]


@pytest.mark.parametrize("job_id", MALFORMED_IDS)
@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""), ("GET", "/result")])
def test_malformed_ids_are_404_problems(
    client: FlaskClient, job_id: str, method: str, suffix: str
) -> None:
    response = client.open(f"/afterward/jobs/{job_id}{suffix}?key=x", method=method)

    assert_problem(response, 404)


def test_malformed_ids_are_404_for_events_too(client: FlaskClient) -> None:
    assert_problem(client.get("/afterward/jobs/nope/events"), 404)


def test_unknown_id_is_404_even_with_its_valid_key(app: Flask, client: FlaskClient) -> None:
    with app.test_request_context():
        urls = job_urls("A" * 22)

    for url in urls.values():
        assert_problem(client.get(url), 404)
    assert_problem(client.delete(urls["status_url"]), 404)


def test_another_client_without_the_key_gets_404(app: Flask, client: FlaskClient) -> None:
    body = client.post("/slow?seconds=0").get_json()
    other = client.post("/slow?seconds=0").get_json()
    run_jobs(app)
    base = f"/afterward/jobs/{body['id']}"
    other_key = other["status_url"].split("key=")[1]

    for url in (base, f"{base}?key=", f"{base}?key=wrong", f"{base}?key={other_key}"):
        assert_problem(client.get(url), 404)
    assert_problem(client.get(f"{base}/result"), 404)
    assert_problem(client.delete(base), 404)
    assert client.get(body["result_url"]).status_code == 201


def test_authorize_hook_decides_and_its_refusal_is_403(
    make_app: cabc.Callable[..., Flask],
) -> None:
    app = make_app(AFTERWARD_AUTHORIZE=accepted.authorize_by_role)
    client = app.test_client()
    body = client.post("/slow?seconds=0").get_json()
    reader = {accepted.ROLE_HEADER: "reader"}
    admin = {accepted.ROLE_HEADER: "admin"}

    assert "key=" not in body["status_url"]
    assert_problem(client.get(body["status_url"]), 403)
    assert_problem(client.get(body["result_url"]), 403)
    assert client.get(body["status_url"], headers=reader).status_code == 200
    assert_problem(client.delete(body["status_url"], headers=reader), 403)
    assert_problem(client.get("/afterward/jobs/" + "A" * 22, headers=admin), 404)
    assert client.delete(body["status_url"], headers=admin).get_json()["state"] == "cancelled"


# Cancelling


def test_cancel_of_a_queued_job_is_at_once_and_it_never_runs(
    app: Flask, client: FlaskClient
) -> None:
    body = client.post("/slow?seconds=0").get_json()

    cancel = client.delete(body["status_url"])
    run_jobs(app)

    assert cancel.status_code == 200
    assert cancel.get_json()["state"] == "cancelled"
    record = record_of(app, body["id"])
    assert (record.state, record.attempts, record.result) == (State.CANCELLED, 0, None)
    assert_problem(client.get(body["result_url"]), 409)
    assert_problem(client.delete(body["status_url"]), 409)


@pytest.mark.parametrize("path", ["/steps", "/catch-all/steps"])
def test_cancel_of_a_running_job_stops_it_at_its_next_progress(
    app: Flask, client: FlaskClient, path: str
) -> None:
    # Given a view reporting progress for up to 20 s, running in a worker
    body = client.post(f"{path}?steps=400&pause=0.05").get_json()
    worker = worker_for(app, afterward)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wait_for(lambda: (record_of(app, body["id"]).progress or 0) > 0)
        # When the client cancels it
        cancel = client.delete(body["status_url"])
        # Then it stops at its next progress report, even under a catch-all handler
        assert cancel.status_code == 202
        assert cancel.get_json()["state"] == "running"
        with pytest.raises(JobCancelled):
            afterward.job(body["id"], app=app).result(timeout=10)
    finally:
        thread.join(timeout=30)
    record = record_of(app, body["id"])
    assert record.state == State.CANCELLED
    assert record.progress is not None and record.progress < 0.5
    assert_problem(client.get(body["result_url"]), 409)


# The request, replayed


def test_before_request_authentication_runs_again_in_the_worker(
    app: Flask, client: FlaskClient
) -> None:
    refused = client.post("/api/v1/items/7")
    body = client.post("/api/v1/items/7", headers=TOKEN).get_json()
    run_jobs(app)

    assert refused.status_code == 401
    assert store_of(app).list() == [record_of(app, body["id"])]
    assert client.get(body["result_url"]).get_json() == {
        "item": 7,
        "client": "api-client",
        "path": "/api/v1/items/7",
        "url": "http://localhost/api/v1/items/7",
    }


def test_flask_login_user_is_the_current_user_in_the_worker(
    app: Flask, client: FlaskClient
) -> None:
    assert client.post("/me").status_code == 401
    assert client.post("/login", data={"username": "ada"}).status_code == 200

    body = client.post("/me").get_json()
    run_jobs(app)

    assert client.get(body["result_url"]).get_json() == {"user": "ada", "in_job": True}


def test_session_cookie_is_not_stored_in_the_result(app: Flask, client: FlaskClient) -> None:
    # A permanent session makes Flask send the session cookie with every response,
    # the replayed one too.
    client.post("/login", data={"username": "ada", "permanent": "1"})
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.expires is not None
    me = client.post("/me").get_json()
    slow = client.post("/slow?seconds=0").get_json()
    run_jobs(app)

    for job in (me, slow):
        assert cookie.value not in (record_of(app, job["id"]).result or "")
    me_result = client.get(me["result_url"])
    assert me_result.get_json()["user"] == "ada"
    # The view's own cookies are kept.
    assert client.get(slow["result_url"]).headers.getlist("Set-Cookie")[0] == (
        "report=built; Path=/"
    )


def test_session_ended_before_the_job_ran_is_seen_by_the_worker(
    app: Flask, client: FlaskClient
) -> None:
    # The Cookie stored with the job is replayed as sent: a login_required view
    # still runs for the user who was logged in when the request came.
    client.post("/login", data={"username": "grace"})
    body = client.post("/me").get_json()
    client.delete_cookie("session")
    run_jobs(app)

    assert client.get(body["result_url"]).get_json()["user"] == "grace"


def test_retry_replays_the_request_with_its_credentials(app: Flask, client: FlaskClient) -> None:
    client.post("/login", data={"username": "ada"})
    body = client.post("/flaky").get_json()

    run_jobs(app)  # the first attempt fails; a retry is due in about a second
    retrying = record_of(app, body["id"])
    assert (retrying.state, retrying.attempts) == (State.QUEUED, 1)
    assert retrying.secrets is not None
    assert client.get(body["result_url"]).status_code == 202
    wait_for(worker_for(app, afterward).run_once, timeout=10)

    assert client.get(body["result_url"]).get_json() == {"user": "ada", "attempt": 2}
    assert record_of(app, body["id"]).secrets is None


def test_async_view_runs_in_the_worker(app: Flask, client: FlaskClient) -> None:
    body = client.post("/async").get_json()
    run_jobs(app)

    assert client.get(body["result_url"]).get_json() == {"async": True, "path": "/async"}


def test_blueprint_view_under_a_script_root_keeps_its_urls(app: Flask, client: FlaskClient) -> None:
    base = "http://example.test/mounted"
    response = client.post("/api/v1/items/3", headers=TOKEN, base_url=base)
    body = response.get_json()
    run_jobs(app)

    assert response.headers["Location"].startswith("/mounted/afterward/jobs/")
    result = client.get(body["result_url"].removeprefix("/mounted"), base_url=base)
    assert result.get_json()["url"] == "http://example.test/mounted/api/v1/items/3"
    assert result.get_json()["path"] == "/api/v1/items/3"


def test_form_parsed_by_a_before_request_hook_is_replayed(app: Flask, client: FlaskClient) -> None:
    client.post("/session", data={"csrf": "t0ken"})
    data = {"csrf": "t0ken", "name": ["Ada", "Lovelace ✓"], "doc": (io.BytesIO(b"notes"), "n.txt")}

    body = client.post("/form", data=data, content_type="multipart/form-data").get_json()
    urlencoded = client.post("/form", data={"csrf": "t0ken", "q": "a b&c"}).get_json()
    run_jobs(app)

    assert client.get(body["result_url"]).get_json() == {
        "form": {"csrf": ["t0ken"], "name": ["Ada", "Lovelace ✓"]},
        "files": {"doc": "notes"},
    }
    assert client.get(urlencoded["result_url"]).get_json()["form"] == {
        "csrf": ["t0ken"],
        "q": ["a b&c"],
    }


def test_encoded_slash_and_question_mark_in_a_path_survive_the_replay(
    app: Flask, client: FlaskClient
) -> None:
    @app.post("/files/<path:name>")
    @afterward.accepted
    def file(name: str) -> dict[str, str]:
        from flask import request

        return {"name": name, "q": request.args["q"]}

    body = client.post("/files/a%3Fb/c%23d%25e?q=%3F").get_json()
    run_jobs(app)

    assert client.get(body["result_url"]).get_json() == {"name": "a?b/c#d%e", "q": "?"}


@pytest.mark.parametrize("store", [MEMORY, SQLITE])
@pytest.mark.parametrize("path", ["/me", "/boom", "/steps"])
def test_credentials_are_stored_apart_and_wiped_when_the_job_finishes(
    make_app: cabc.Callable[..., Flask], store: str, path: str
) -> None:
    app = make_app(AFTERWARD_STORE=store)
    client = app.test_client()
    client.post("/login", data={"username": "ada"})
    cookie = client.get_cookie("session")
    assert cookie is not None
    headers = {"Authorization": "Basic c2VjcmV0OnNlY3JldA=="}

    body = client.post(path, headers=headers).get_json()
    stored = record_of(app, body["id"])
    assert stored.secrets is not None
    assert cookie.value in stored.secrets and "c2VjcmV0OnNlY3JldA" in stored.secrets
    if path == "/steps":
        client.delete(body["status_url"])
    else:
        run_jobs(app)

    record = record_of(app, body["id"])
    assert record.state in {State.SUCCEEDED, State.FAILED, State.CANCELLED}
    assert record.secrets is None
    for secret in (cookie.value, "c2VjcmV0OnNlY3JldA", "Cookie", "Authorization"):
        assert secret not in record.payload


# Limits


def test_body_over_max_payload_is_413_and_stores_nothing(
    make_app: cabc.Callable[..., Flask],
) -> None:
    app = make_app(AFTERWARD_MAX_PAYLOAD=4096)
    client = app.test_client()

    too_long = client.post("/slow", data=b"x" * 5000)
    # Under the limit itself, but not once encoded with its headers: still a 413.
    encoded_too_long = client.post("/slow", data=b"x" * 4000)
    fits = client.post("/slow", data=b"x" * 1000)

    assert too_long.status_code == 413
    assert encoded_too_long.status_code == 413
    assert b"AFTERWARD_MAX_PAYLOAD" in encoded_too_long.data
    assert fits.status_code == 202
    assert len(store_of(app).list()) == 1


def _row_count(app: Flask) -> int:
    path = pathlib.Path(app.instance_path) / "afterward.sqlite3"
    with sqlite3.connect(path) as connection:
        count: int = connection.execute("SELECT count(*) FROM afterward_jobs").fetchone()[0]
    connection.close()
    return count


def test_job_and_result_are_gone_after_the_result_ttl(make_app: cabc.Callable[..., Flask]) -> None:
    app = make_app(AFTERWARD_STORE=SQLITE)
    client = app.test_client()
    store_of(app).prune(time.time())
    rows_before = _row_count(app)

    body = client.post("/short-lived").get_json()
    run_jobs(app)
    assert client.get(body["result_url"]).data == b"short-lived\n"
    wait_for(lambda: client.get(body["status_url"]).status_code == 404, timeout=10)

    assert_problem(client.get(body["result_url"]), 404)
    assert_problem(client.get(body["events_url"]), 404)
    assert store_of(app).prune(time.time()) == 1
    assert _row_count(app) == rows_before


# Events


def _events(response: TestResponse) -> list[tuple[str, dict[str, t.Any]]]:
    text = b"".join(response.response).decode()  # type: ignore[arg-type]
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_events_stream_reports_rising_progress_and_ends(app: Flask, client: FlaskClient) -> None:
    body = client.post("/steps?steps=8&pause=0.1").get_json()
    worker = worker_for(app, afterward)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        with client.get(body["events_url"], buffered=False) as response:
            assert response.mimetype == "text/event-stream"
            assert response.headers["Cache-Control"] == "no-cache"
            events = _events(response)
    finally:
        thread.join(timeout=30)

    assert {name for name, _ in events} == {"update"}
    progress = [event["progress"] for _, event in events if event["progress"] is not None]
    assert len(progress) >= 2
    assert progress == sorted(progress)
    assert events[-1][1]["state"] == "succeeded"
    assert events[-1][1]["progress"] == 1.0


def test_last_event_of_a_job_failing_while_streamed_has_its_error(
    app: Flask, client: FlaskClient
) -> None:
    body = client.post("/steps?steps=4&pause=0.1&fail=1").get_json()
    thread = threading.Thread(target=worker_for(app, afterward).run_once)
    thread.start()
    try:
        with client.get(body["events_url"], buffered=False) as response:
            events = _events(response)
    finally:
        thread.join(timeout=30)

    assert events[0][1]["state"] in {"queued", "running"}
    last = events[-1][1]
    assert last["state"] == "failed"
    assert last["error"] == {"type": "RuntimeError", "message": "failed after its steps"}
    assert last["finished_at"] is not None and last["started_at"] is not None
    assert last["result_url"] == body["result_url"]


def test_events_of_a_finished_job_are_one_update(app: Flask, client: FlaskClient) -> None:
    body = client.post("/boom").get_json()
    run_jobs(app)

    with client.get(body["events_url"], buffered=False) as response:
        events = _events(response)

    assert [(name, event["state"]) for name, event in events] == [("update", "failed")]
    assert events[0][1]["error"]["type"] == "RuntimeError"


# The OpenAPI document


def test_openapi_document_describes_every_jobs_api_route(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/afterward/openapi.json").get_json()
    mounted = client.get("/afterward/openapi.json", base_url="http://localhost/m").get_json()

    assert spec["openapi"].startswith("3.1")
    assert spec["servers"] == [{"url": "/afterward"}]
    assert mounted["servers"] == [{"url": "/m/afterward"}]
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("afterward."):
            path = rule.rule.removeprefix("/afterward").replace("<job_id>", "{job_id}")
            methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
            assert methods <= set(spec["paths"][path]), rule


# Capture and rebuild, property-based

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_REBUILT = {"host", "content-length", "content-type", "transfer-encoding", "cookie"}
_plain_app = Flask("capture")

header_names = st.text(st.sampled_from(_TCHARS), min_size=1, max_size=12).filter(
    lambda name: name.lower() not in _REBUILT and name.lower() not in replay.SECRET_HEADERS
)
# WSGI header values are latin-1; no control characters (servers refuse them).
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
).map(str.strip)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.just({}),
    json_values.map(lambda value: {"json": value}),
    st.lists(st.tuples(texts, texts), max_size=5).map(
        lambda pairs: {
            "data": MultiDict(pairs),
            "content_type": "application/x-www-form-urlencoded",
        }
    ),
    st.binary(max_size=64).map(
        lambda data: {"data": data, "content_type": "application/octet-stream"}
    ),
)


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "REPORT"]),
    segments=st.lists(texts.filter(bool), max_size=4),
    script_root=st.sampled_from(["", "/mounted", "/a%20b"]),
    query=st.lists(st.tuples(texts, texts), max_size=5),
    headers=st.lists(st.tuples(header_names, header_values), max_size=5),
    secrets=st.fixed_dictionaries(
        {}, optional={"Cookie": st.just("session=abc"), "Authorization": st.just("Bearer x")}
    ),
    body=bodies,
    remote_addr=st.sampled_from(["127.0.0.1", "203.0.113.9", "::1"]),
)
@settings(max_examples=150, deadline=None)
def test_captured_request_rebuilds_to_the_same_request(
    method: str,
    segments: list[str],
    script_root: str,
    query: list[tuple[str, str]],
    headers: list[tuple[str, str]],
    secrets: dict[str, str],
    body: dict[str, t.Any],
    remote_addr: str,
) -> None:
    path = "/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)
    environ = {"REMOTE_ADDR": remote_addr}
    with _plain_app.test_request_context(
        path,
        base_url=f"https://example.test:8443{script_root}",
        method=method,
        query_string=urllib.parse.urlencode(query),
        headers=[*headers, *secrets.items()],
        environ_base=environ,
        **body,
    ):
        original = _seen(flask.request)
        captured, stored_secrets = replay.capture_request()
    # Stored as JSON text, like a job's payload.
    captured = serializers.loads(serializers.dumps(captured))
    stored_secrets = serializers.loads(serializers.dumps(stored_secrets))

    rebuilt = Request(replay.rebuild_environ(captured, stored_secrets))

    assert _seen(rebuilt) == original
    assert stored_secrets == secrets
    for value in secrets.values():
        assert value not in json.dumps(captured)


def _seen(request: Request) -> dict[str, t.Any]:
    """Everything a view can read from a request."""
    return {
        "method": request.method,
        "url": request.url,
        "script_root": request.root_path,
        "path": request.path,
        "args": list(request.args.items(multi=True)),
        "headers": sorted(request.headers.items()),
        "body": request.get_data(),
        "form": list(request.form.items(multi=True)),
        "json": request.get_json(silent=True) if request.is_json else None,
        "remote_addr": request.remote_addr,
        "cookies": dict(request.cookies),
        "authorization": request.headers.get("Authorization"),
    }


def test_events_stream_of_an_unfinished_job_ends_at_its_time_bound(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "EVENTS_MAX_SECONDS", 0.3)
    body = client.post("/slow").get_json()

    started = time.monotonic()
    with client.get(body["events_url"], buffered=False) as response:
        events = _events(response)

    assert time.monotonic() - started < 5
    assert [(name, event["state"]) for name, event in events] == [("update", "queued")]


def test_openapi_operations_never_answer_5xx(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given jobs in every state the API can be asked about, and short event streams
    monkeypatch.setattr(views, "EVENTS_MAX_SECONDS", 0.2)
    jobs = [client.post(path).get_json() for path in ("/slow?seconds=0", "/missing", "/boom")]
    client.delete(client.post("/slow").get_json()["status_url"])
    run_jobs(app)
    jobs += [client.post("/slow").get_json(), client.post("/parked").get_json()]
    failed = jobs[2]["id"]
    schema = schemathesis.openapi.from_wsgi("/afterward/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {
        "GET /jobs/{job_id}",
        "DELETE /jobs/{job_id}",
        "GET /jobs/{job_id}/result",
        "GET /jobs/{job_id}/events",
    }
    seen: set[tuple[str, str, int]] = set()

    # When schemathesis calls every operation with generated ids and keys, some real
    @given(case=st.one_of([op.as_strategy() for op in operations]), data=st.data())
    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,  # the same calls every run: the coverage check below is stable
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case, data: st.DataObject) -> None:
        if data.draw(st.booleans(), label="real job"):
            job = data.draw(st.sampled_from(jobs), label="job")
            case.path_parameters = {"job_id": job["id"]}
            if data.draw(st.booleans(), label="with its key"):
                case.query = {"key": job["status_url"].split("key=")[1]}
        response = case.call()
        seen.add((case.method, case.path, response.status_code))
        # Then no answer is a server error, except the stored failure of the failed job
        is_job_failure = case.path.endswith("/result") and case.path_parameters == {
            "job_id": failed
        }
        excluded: list[t.Any] = [not_a_server_error] if is_job_failure else []
        if case.path.endswith("/events"):  # schemathesis reads the schema per event
            excluded.append(response_schema_conformance)
        case.validate_response(response, excluded_checks=excluded)
        assert response.status_code < 500 or is_job_failure

    call()
    # And the real jobs were reached, in several states
    statuses = {status for _, _, status in seen}
    assert {200, 404, 409} <= statuses, seen


# What an accepted view defers runs after its replay


def test_an_accepted_views_callbacks_and_deferred_jobs_run_after_its_replay(
    tmp_path: pathlib.Path,
) -> None:
    # Given an accepted view that defers a callback and a durable job of its own
    from flask_afterward import after_this_response
    from flask_afterward import Afterward

    app = Flask("replay_defers", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="s", AFTERWARD_STORE=MEMORY, AFTERWARD_WORKERS=0)
    own = Afterward(app)
    called = threading.Event()
    seen: list[str] = []

    @own.task
    def follow_up(word: str) -> str:
        return word.upper()

    @app.post("/defers")
    @own.accepted
    def defers() -> dict[str, str]:
        after_this_response(lambda: (seen.append(flask.request.path), called.set()))
        job = follow_up.after_response("later")
        return {"follow_up": job.id}

    try:
        # When the accepted job runs in a worker
        accepted_id = app.test_client().post("/defers").get_json()["id"]
        with app.app_context():
            worker = worker_for(app, own)
            assert worker.run_once()
            result = own.job(accepted_id).result(timeout=5)
            follow_up_id = json.loads(replay.decode_response(result).get_data())["follow_up"]
            # Then the callback ran in the replayed request's context
            assert called.wait(5)
            assert seen == ["/defers"]
            # And the deferred job was released, so the next run picks it up at once
            own.wait_for_callbacks(5)
            assert own.job(follow_up_id).state == State.QUEUED
            assert worker.run_once()
            assert own.job(follow_up_id).result(timeout=5) == "LATER"
    finally:
        own.close(app, timeout=5)
