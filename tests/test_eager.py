"""Eager mode (``AFTERWARD_EAGER=True``): jobs run inline at ``.delay()``, for tests."""

from __future__ import annotations

import collections.abc as cabc
import time

import pytest
from flask import Flask

from flask_afterward import Afterward
from flask_afterward import current_job
from flask_afterward import progress
from flask_afterward import State
from flask_afterward.errors import JobCancelled
from flask_afterward.errors import JobFailed
from flask_afterward.errors import SerializationError
from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.signals import job_finished
from flask_afterward.signals import job_started
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES
from tests.tier2 import worker_threads


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    # AFTERWARD_WORKERS keeps its default: eager mode must start no worker anyway.
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_EAGER=True)
    return app


class Boom(Exception):
    pass


def test_delay_runs_the_job_inline_and_returns_it_succeeded(
    app: Flask, afterward: Afterward
) -> None:
    before = worker_threads()
    seen: list[object] = []

    @afterward.task
    def add(a: int, b: int) -> int:
        seen.append((current_job.id, current_job.attempt))
        progress(0.5, "half way")
        return a + b

    with app.app_context():
        job = add.delay(2, 3)
        assert seen == [(job.id, 1)]  # it ran before delay() returned
        assert job.state == State.SUCCEEDED
        assert job.result(timeout=0) == 5
        assert afterward.job(job.id).result(timeout=0) == 5  # and it is stored
    assert worker_threads() - before == set()


def test_retries_run_inline_too(app: Flask, afterward: Afterward) -> None:
    attempts: list[int] = []

    @afterward.task(retries=2, retry_backoff=60)  # no waiting between eager attempts
    def flaky() -> str:
        attempts.append(current_job.attempt)
        if len(attempts) < 3:
            raise Boom("not yet")
        return "done"

    with app.app_context():
        job = flaky.delay()
    assert attempts == [1, 2, 3]
    assert job.result(timeout=0) == "done"
    assert job.record.attempts == 3


def test_the_exception_propagates_at_the_call_and_the_job_is_stored_failed(
    app: Flask, afterward: Afterward
) -> None:
    attempts: list[int] = []

    @afterward.task(retries=1)
    def broken() -> None:
        attempts.append(current_job.attempt)
        raise Boom("always")

    with app.app_context(), pytest.raises(Boom, match="always") as info:
        broken.delay()
    assert attempts == [1, 2]
    assert any("eager job" in note for note in info.value.__notes__)
    (failed,) = store_of(app).list(state=State.FAILED)
    assert failed.task == broken.name
    assert failed.attempts == 2
    assert failed.error is not None and failed.error.startswith(f"{__name__}.Boom: always")
    with app.app_context(), pytest.raises(JobFailed, match="Boom: always"):
        afterward.job(failed.id).result(timeout=0)


def test_a_result_that_cannot_be_encoded_fails_at_once_without_retry(
    app: Flask, afterward: Afterward
) -> None:
    calls: list[int] = []

    @afterward.task(retries=3)
    def make() -> object:
        calls.append(1)
        return object()

    with app.app_context(), pytest.raises(SerializationError, match="the result of"):
        make.delay()
    assert calls == [1]
    (failed,) = store_of(app).list(state=State.FAILED)
    assert failed.attempts == 1


def test_arguments_go_through_the_same_json_round_trip(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def echo(value: object) -> object:
        return value

    with app.app_context():
        assert echo.delay((1, 2)).result(timeout=0) == [1, 2]  # as a worker would see it
        with pytest.raises(SerializationError, match=r"args\[0\]"):
            echo.delay(object())


def test_eager_jobs_send_started_and_finished_signals(app: Flask, afterward: Afterward) -> None:
    outcomes: list[tuple[str, object, str | None]] = []

    def receiver(kind: str) -> cabc.Callable[..., None]:
        def receive(sender: object, job: object, outcome: str | None = None) -> None:
            outcomes.append((kind, sender, outcome))

        return receive

    @afterward.task(retries=1)
    def flaky() -> None:
        if current_job.attempt == 1:
            raise Boom()

    with (
        job_started.connected_to(receiver("started")),
        job_finished.connected_to(receiver("finished")),
        app.app_context(),
    ):
        flaky.delay()
    assert outcomes == [
        ("started", app, None),
        ("finished", app, "retrying"),
        ("started", app, None),
        ("finished", app, "succeeded"),
    ]


@pytest.mark.parametrize("fails", [False, True], ids=["succeeded", "failed"])
def test_secrets_are_readable_while_running_and_wiped_once_finished(
    app: Flask, afterward: Afterward, fails: bool
) -> None:
    seen: list[str | None] = []

    @afterward.task
    def needs_cookie() -> None:
        seen.append(current_job.record.secrets)
        if fails:
            raise Boom()

    with app.app_context():
        try:
            needs_cookie.enqueue((), {}, secrets={"Cookie": "session=1"})
        except Boom:
            pass
    assert seen and seen[0] is not None and "session=1" in seen[0]
    (stored,) = store_of(app).list()
    assert stored.state == (State.FAILED if fails else State.SUCCEEDED)
    assert stored.secrets is None


def test_a_job_whose_awaited_job_was_cancelled_fails_and_is_retried(
    app: Flask, afterward: Afterward
) -> None:
    # Nothing can cancel an eager job itself: JobCancelled comes from another job.
    now = time.time()
    cancelled = JobRecord(
        id=new_job_id(), task="other", payload="{}", state=State.CANCELLED, finished_at=now
    )
    store_of(app).enqueue(cancelled)
    attempts: list[int] = []

    @afterward.task(retries=1)
    def parent(child_id: str) -> None:
        attempts.append(current_job.attempt)
        afterward.job(child_id).result(timeout=0)

    with app.app_context(), pytest.raises(JobCancelled):
        parent.delay(cancelled.id)
    assert attempts == [1, 2]
    (failed,) = store_of(app).list(state=State.FAILED)
    assert failed.error is not None
    assert failed.error.startswith("flask_afterward.errors.JobCancelled")
