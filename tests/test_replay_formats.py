"""The formats an accepted view's job stores: versioned, and old rows still read.

A captured request (the job's argument) and the view's response (the job's result)
outlive a deploy in the store, so each carries ``"version": 1``. Rows written before
the key existed read as version 1; a version this release does not know is refused
with :class:`~flask_afterward.errors.UnsupportedVersion`, naming the version.
"""

from __future__ import annotations

import collections.abc as cabc
import json
import pathlib
import sqlite3
import typing as t

import pytest
from flask import Flask

from flask_afterward import replay
from flask_afterward import State
from flask_afterward.errors import AfterwardError
from flask_afterward.errors import UnsupportedVersion
from tests.apps import accepted
from tests.apps.accepted import afterward
from tests.tier2 import run_burst
from tests.tier2 import store_of


@pytest.fixture
def app(tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """The accepted app on a SQLite store, so a test can rewrite rows as old ones."""
    app = accepted.create_app(
        tmp_path / "app",
        TESTING=True,
        AFTERWARD_STORE="sqlite:///afterward.sqlite3",
        AFTERWARD_WORKERS=0,
    )
    yield app
    afterward.close(app, timeout=5)


def _rewrite(app: Flask, job_id: str, column: str, change: cabc.Callable[[t.Any], None]) -> None:
    """Load the row's JSON ``column``, ``change`` it in place, store it back."""
    path = pathlib.Path(app.instance_path) / "afterward.sqlite3"
    with sqlite3.connect(path) as connection:
        [text] = connection.execute(
            f"SELECT {column} FROM afterward_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        value = json.loads(text)
        change(value)
        connection.execute(
            f"UPDATE afterward_jobs SET {column} = ? WHERE id = ?", (json.dumps(value), job_id)
        )
    connection.close()


def _captured_requests(payload: t.Any) -> list[dict[str, t.Any]]:
    """The captured-request dicts inside a stored payload, wherever they sit."""
    if isinstance(payload, dict):
        if "path_info" in payload and "method" in payload:
            return [payload]
        return [found for value in payload.values() for found in _captured_requests(value)]
    if isinstance(payload, list):
        return [found for value in payload for found in _captured_requests(value)]
    return []


def test_stored_request_and_response_carry_version_1(app: Flask) -> None:
    client = app.test_client()
    body = client.post("/slow?seconds=0").get_json()
    record = store_of(app).get(body["id"])
    assert record is not None
    [captured] = _captured_requests(json.loads(record.payload))
    assert captured["version"] == 1

    run_burst(app, afterward)

    record = store_of(app).get(body["id"])
    assert record is not None and record.state == State.SUCCEEDED
    stored = json.loads(record.result or "null")
    assert stored["version"] == 1
    assert client.get(body["result_url"]).status_code == 201


def test_job_stored_before_formats_had_a_version_still_runs_and_serves(app: Flask) -> None:
    # Given an accepted job and, after it ran, its result, both rewritten without the
    # version key, as releases before it stored them
    client = app.test_client()
    body = client.post("/slow?seconds=0", json={"title": "old row"}).get_json()

    def drop_version(payload: t.Any) -> None:
        [captured] = _captured_requests(payload)
        del captured["version"]

    _rewrite(app, body["id"], "payload", drop_version)

    # When a worker runs it and a client fetches the result
    run_burst(app, afterward)
    _rewrite(app, body["id"], "result", lambda stored: stored.pop("version"))
    result = client.get(body["result_url"])

    # Then it ran as version 1, and the old result is served as it was stored
    assert result.status_code == 201
    assert result.get_json()["json"] == {"title": "old row"}
    assert result.headers["X-Report"] == "ready"


def test_job_stored_in_an_unknown_version_fails_with_a_clear_error(app: Flask) -> None:
    client = app.test_client()
    body = client.post("/slow?seconds=0").get_json()

    def from_the_future(payload: t.Any) -> None:
        [captured] = _captured_requests(payload)
        captured["version"] = 2

    _rewrite(app, body["id"], "payload", from_the_future)
    run_burst(app, afterward)

    record = store_of(app).get(body["id"])
    assert record is not None and record.state == State.FAILED
    assert record.error is not None
    assert "UnsupportedVersion" in record.error
    assert "captured request has format version 2" in record.error


def test_decoding_a_response_of_an_unknown_version_is_refused(app: Flask) -> None:
    stored = {"version": 7, "status": 200, "headers": [], "body": ""}
    with app.app_context(), pytest.raises(UnsupportedVersion, match="version 7") as caught:
        replay.decode_response(stored)
    assert isinstance(caught.value, AfterwardError) and isinstance(caught.value, ValueError)


def test_response_round_trips_through_json(app: Flask) -> None:
    with app.test_request_context():
        original = app.response_class(b"\x00binary", status=207, headers={"X-A": "1"})
        stored = json.loads(json.dumps(replay.encode_response(original)))
        decoded = replay.decode_response(stored)

    assert stored["version"] == 1
    assert decoded.status_code == 207
    assert decoded.headers["X-A"] == "1"
    assert decoded.get_data() == b"\x00binary"
