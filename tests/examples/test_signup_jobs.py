"""The durable-jobs page of the demo (``examples/demoapp/signup_jobs.py``).

A signup stores a user with Flask-SQLAlchemy and a deferred job; once the response is
closed the job is queued, and a worker records in the database that the mail was sent.
The Flask test client closes the response only with ``buffered=True`` (or ``with``).
"""

from __future__ import annotations

import threading
import types
import typing as t

import pytest
from flask import Flask

from flask_afterward import State
from flask_afterward.config import EXTENSION_KEY
from flask_afterward.worker import Worker


def run_jobs(demo: types.ModuleType, app: Flask) -> None:
    """Run every runnable job on the app's store, then return (a burst worker)."""
    store = app.extensions[EXTENSION_KEY].store
    Worker(app, store, demo.afterward.tasks).run(threading.Event(), burst=True)


def user_row(demo: types.ModuleType, app: Flask, email: str) -> t.Any:
    """The ``User`` with this address, read from the database in a fresh session."""
    signup_jobs = demo.signup_jobs
    with app.app_context():
        query = signup_jobs.db.select(signup_jobs.User).filter_by(email=email)
        return signup_jobs.db.session.execute(query).scalar_one_or_none()


def job_state(demo: types.ModuleType, app: Flask, job_id: str) -> State:
    with app.app_context():
        return demo.afterward.job(job_id).state


def test_signup_stores_the_user_and_a_worker_records_the_mail(
    demo: types.ModuleType, app: Flask
) -> None:
    client = app.test_client()

    # When the form is posted (buffered=True: the client closes the response).
    response = client.post("/jobs/", data={"email": "ada@example.com"}, buffered=True)

    # Then the user is committed with the id of a queued job, and no mail is sent yet.
    assert response.status_code == 303
    assert response.location == "/jobs/"
    assert demo.afterward.wait_for_callbacks(5, app=app)  # the release runs on the pool
    user = user_row(demo, app, "ada@example.com")
    assert user.welcome_sent_at is None
    assert job_state(demo, app, user.welcome_job_id) == State.QUEUED

    # When a worker runs the queued jobs.
    run_jobs(demo, app)

    # Then the task recorded the mail in the database, and the job has its result.
    assert user_row(demo, app, "ada@example.com").welcome_sent_at is not None
    with app.app_context():
        job = demo.afterward.job(user.welcome_job_id)
        assert job.result(timeout=0) == "sent to ada@example.com"
    page = client.get("/jobs/").data
    assert b"<td>ada@example.com</td>" in page
    assert b"succeeded" in page


def test_the_job_waits_until_the_response_is_closed(demo: types.ModuleType, app: Flask) -> None:
    client = app.test_client()

    # Given a response the client has not closed yet.
    response = client.post("/jobs/", data={"email": "ada@example.com"})
    assert response.status_code == 303
    job_id = user_row(demo, app, "ada@example.com").welcome_job_id

    # Then the job is stored but deferred: a worker does not take it.
    run_jobs(demo, app)
    assert job_state(demo, app, job_id) == State.DEFERRED

    # When the response is closed, as a server does after the last byte.
    response.close()
    assert demo.afterward.wait_for_callbacks(5, app=app)

    # Then the job is released and runs.
    run_jobs(demo, app)
    assert job_state(demo, app, job_id) == State.SUCCEEDED
    assert user_row(demo, app, "ada@example.com").welcome_sent_at is not None


def test_a_job_that_runs_again_does_not_send_again(demo: types.ModuleType, app: Flask) -> None:
    client = app.test_client()
    client.post("/jobs/", data={"email": "ada@example.com"}, buffered=True)
    assert demo.afterward.wait_for_callbacks(5, app=app)
    run_jobs(demo, app)
    sent_at = user_row(demo, app, "ada@example.com").welcome_sent_at
    user_id = user_row(demo, app, "ada@example.com").id

    # When the task runs a second time for the same user (at-least-once delivery).
    with app.app_context():
        again = demo.signup_jobs.send_welcome_mail.delay(user_id)
    run_jobs(demo, app)

    # Then it sees the record of the first run and does nothing.
    with app.app_context():
        assert again.result(timeout=0) == "already sent to ada@example.com"
    assert user_row(demo, app, "ada@example.com").welcome_sent_at == sent_at


def test_eager_mode_sends_the_mail_before_the_response(
    demo: types.ModuleType, eager_app: Flask
) -> None:
    # With AFTERWARD_EAGER the job runs at the after_response() call, inside the view.
    response = eager_app.test_client().post(
        "/jobs/", data={"email": "ada@example.com"}, buffered=True
    )

    assert response.status_code == 303
    user = user_row(demo, eager_app, "ada@example.com")
    assert user.welcome_sent_at is not None
    assert job_state(demo, eager_app, user.welcome_job_id) == State.SUCCEEDED


def test_a_failed_first_attempt_is_retried(demo: types.ModuleType, eager_app: Flask) -> None:
    # Eager mode retries at once, without the back-off a worker waits.
    response = eager_app.test_client().post(
        "/jobs/", data={"email": "ada+retry@example.com"}, buffered=True
    )

    assert response.status_code == 303
    user = user_row(demo, eager_app, "ada+retry@example.com")
    assert user.welcome_sent_at is not None
    with eager_app.app_context():
        job = demo.afterward.job(user.welcome_job_id)
    assert job.state == State.SUCCEEDED
    assert job.record.attempts == 2


@pytest.mark.parametrize(
    ("email", "message"),
    [("nope", b"does not look like an email address"), ("ada@example.com", b"already")],
)
def test_bad_or_taken_address_is_refused_without_a_job(
    demo: types.ModuleType, app: Flask, email: str, message: bytes
) -> None:
    client = app.test_client()
    client.post("/jobs/", data={"email": "ada@example.com"}, buffered=True)
    assert demo.afterward.wait_for_callbacks(5, app=app)

    response = client.post("/jobs/", data={"email": email}, buffered=True)

    assert response.status_code == 400
    assert message in response.data
    assert demo.afterward.wait_for_callbacks(5, app=app)
    store = app.extensions[EXTENSION_KEY].store
    assert len(store.list()) == 1
