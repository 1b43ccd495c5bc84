"""The reports page of the demo (``examples/demoapp/reports.py``): an accepted view.

A POST is answered ``202 Accepted`` with the job's URLs; a worker replays the request
and runs the view, whose CSV response is then served at the result URL. The tests run
the jobs with a burst worker (or ``AFTERWARD_EAGER``), with no delay per report.
"""

from __future__ import annotations

import csv
import io
import types

import pytest
from flask import Flask

from flask_afterward import State
from flask_afterward.config import EXTENSION_KEY
from tests.tier2 import run_burst


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
