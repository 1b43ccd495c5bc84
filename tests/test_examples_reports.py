"""The reports page of the demo (``examples/demoapp/reports.py``): an accepted view.

A POST is answered ``202 Accepted`` with the job's URLs; a worker replays the request
and runs the view, whose CSV response is then served at the result URL. The tests run
the jobs with a burst worker (or ``AFTERWARD_EAGER``), with no delay per report.
"""

from __future__ import annotations

import collections.abc as cabc
import csv
import importlib
import io
import pathlib
import types
import typing as t

import pytest
from flask import Flask

from flask_afterward import State
from flask_afterward.config import EXTENSION_KEY
from tests.tier2 import run_burst

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``examples/demo.py`` imported the way ``make demo`` runs it: examples/ on the path."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("demo")


def make_app(
    demo: types.ModuleType, tmp_path: pathlib.Path, **config: t.Any
) -> cabc.Iterator[Flask]:
    """The demo app with its stores under ``tmp_path``; closed and disposed afterwards."""
    settings = {"TESTING": True, "DEMO_REPORT_SECONDS": 0.0, **config}
    app: Flask = demo.create_app(settings, instance_path=str(tmp_path / "instance"))
    yield app
    demo.afterward.close(app, timeout=5)
    with app.app_context():
        demo.signup_jobs.db.engine.dispose()


@pytest.fixture
def app(demo: types.ModuleType, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """No worker threads in the app: the test runs the jobs itself, with a worker."""
    yield from make_app(demo, tmp_path, AFTERWARD_WORKERS=0)


@pytest.fixture
def eager_app(demo: types.ModuleType, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """AFTERWARD_EAGER: the job runs where it is enqueued, inside the POST."""
    yield from make_app(demo, tmp_path, AFTERWARD_EAGER=True)


def report_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def test_page_has_the_form_and_loads_the_job_client(app: Flask) -> None:
    client = app.test_client()

    page = client.get("/reports/")
    script = client.get("/reports/static/follow-job.js")

    assert page.status_code == 200
    assert b'name="rows"' in page.data
    assert b'src="/reports/static/follow-job.js"' in page.data
    assert b"<progress" in page.data
    assert script.status_code == 200
    assert b"function followJob(job, onUpdate)" in script.data
    assert b"new EventSource(job.events_url)" in script.data
    script.close()


def test_post_is_accepted_at_once_and_a_worker_builds_the_csv(
    demo: types.ModuleType, app: Flask
) -> None:
    client = app.test_client()

    # When the form is posted.
    response = client.post("/reports/", data={"rows": "50"})

    # Then the answer is 202 with the job's URLs, and the report is not built yet.
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == job["status_url"]
    assert job["state"] == "queued"
    assert client.get(job["result_url"]).status_code == 202

    # When a worker runs the job.
    run_burst(app, demo.afterward)

    # Then the status says so, and the result URL serves the view's CSV download.
    status = client.get(job["status_url"]).get_json()
    assert (status["state"], status["progress"]) == ("succeeded", 1.0)
    assert status["message"] == "50 of 50 rows"
    result = client.get(job["result_url"])
    assert result.status_code == 200
    assert result.mimetype == "text/csv"
    assert result.headers["Content-Disposition"] == "attachment; filename=report-50-rows.csv"
    rows = report_rows(result.data)
    assert rows[0] == ["date", "region", "product", "units", "revenue"]
    assert len(rows) == 51


def test_event_stream_of_a_finished_report_is_one_update(
    demo: types.ModuleType, app: Flask
) -> None:
    client = app.test_client()
    job = client.post("/reports/", data={"rows": "5"}).get_json()
    run_burst(app, demo.afterward)

    events = client.get(job["events_url"])

    assert events.mimetype == "text/event-stream"
    text = events.get_data(as_text=True)
    assert text.count("event: update\n") == 1
    assert '"state": "succeeded"' in text


@pytest.mark.parametrize("rows", ["0", "100001", "many", ""])
def test_bad_row_count_is_400_and_stores_no_job(app: Flask, rows: str) -> None:
    response = app.test_client().post("/reports/", data={"rows": rows})

    assert response.status_code == 400
    assert b"Ask for 1 to 100000 rows." in response.data
    assert app.extensions[EXTENSION_KEY].store.list() == []


def test_eager_mode_builds_the_report_before_answering(
    demo: types.ModuleType, eager_app: Flask
) -> None:
    client = eager_app.test_client()

    job = client.post("/reports/", data={"rows": "3"}).get_json()

    assert job["state"] == State.SUCCEEDED
    result = client.get(job["result_url"])
    assert result.status_code == 200
    assert len(report_rows(result.data)) == 4
