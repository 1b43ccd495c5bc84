"""The ``Job`` handle, ``afterward.job()``, ``progress()`` and ``current_job``.

Every test runs against the memory and the sqlite store. Jobs run only when a test
drives a worker itself, in this thread or in one it starts and joins.
"""

from __future__ import annotations

import base64
import re
import threading
import time

import pytest
from flask import Flask

from flask_afterward import Afterward
from flask_afterward import current_job
from flask_afterward import progress
from flask_afterward import State
from flask_afterward.errors import JobCancelled
from flask_afterward.errors import JobFailed
from flask_afterward.errors import JobNotFound
from flask_afterward.errors import JobTimeout
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES
from tests.tier2 import worker_for


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_WORKERS=0)
    return app


def _run_in_thread(app: Flask, afterward: Afterward) -> threading.Thread:
    thread = threading.Thread(target=worker_for(app, afterward).run_once)
    thread.start()
    return thread


def test_job_ids_are_128_random_bits_and_url_safe(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def noop() -> None:
        pass

    with app.app_context():
        ids = {noop.delay().id for _ in range(20)}
    assert len(ids) == 20
    for job_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", job_id)
        assert len(base64.urlsafe_b64decode(job_id + "==")) == 16


def test_result_returns_what_the_task_returned(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def pair(a: int) -> dict[str, list[int]]:
        return {"pair": [a, a + 1]}

    with app.app_context():
        job = pair.delay(1)
        worker_for(app, afterward).run_once()
        assert job.result(timeout=1) == {"pair": [1, 2]}
    assert job.state == State.SUCCEEDED
    assert job.finished_at is not None


def test_result_raises_job_failed_with_the_error_text(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def divide(a: int, b: int) -> float:
        return a / b

    with app.app_context():
        job = divide.delay(1, 0)
        worker_for(app, afterward).run_once()
        with pytest.raises(JobFailed, match="ZeroDivisionError: division by zero") as info:
            job.result(timeout=1)
    assert "Traceback" in str(info.value)
    assert job.state == State.FAILED


def test_result_raises_job_timeout_while_the_job_is_unfinished(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task
    def noop() -> None:
        pass

    with app.app_context():
        job = noop.delay()
        started = time.monotonic()
        with pytest.raises(JobTimeout, match="still queued"):
            job.result(timeout=0.1)
        assert time.monotonic() - started < 2
        with pytest.raises(TimeoutError):  # catchable by its natural type
            job.result(timeout=0)


def test_cancelling_a_queued_job_means_it_never_runs(app: Flask, afterward: Afterward) -> None:
    runs: list[int] = []

    @afterward.task
    def work() -> None:
        runs.append(1)

    with app.app_context():
        job = work.delay()
        assert job.cancel() is True
        assert job.state == State.CANCELLED  # cancel() refreshes the handle

        assert worker_for(app, afterward).run_once() is False
        with pytest.raises(JobCancelled):
            job.result(timeout=0)
        assert job.cancel() is False  # already finished
    assert runs == []


def test_cancelling_a_running_job_stops_it_at_its_next_progress_call(
    app: Flask, afterward: Afterward
) -> None:
    started, go = threading.Event(), threading.Event()
    seen: list[str] = []

    @afterward.task
    def long() -> None:
        started.set()
        go.wait(5)
        try:
            progress(0.5, "half way")
        except JobCancelled:
            seen.append("cancelled at progress")
            raise
        seen.append("went on")

    with app.app_context():
        job = long.delay()
        thread = _run_in_thread(app, afterward)
        try:
            assert started.wait(5)
            assert job.cancel() is True
            # Cooperative: it is still running until it reaches progress().
            assert job.state == State.RUNNING
        finally:
            go.set()
            thread.join(5)
        job.refresh()
        assert job.state == State.CANCELLED
        with pytest.raises(JobCancelled):
            job.result(timeout=0)
    assert seen == ["cancelled at progress"]


def test_progress_and_message_are_visible_while_the_job_runs(
    app: Flask, afterward: Afterward
) -> None:
    reported, go = threading.Event(), threading.Event()

    @afterward.task
    def long() -> str:
        progress(0.25, "reading")
        progress(1.7, "clamped")  # out of range: clamped to 1.0
        progress(0.5, "half way")
        reported.set()
        go.wait(5)
        return "done"

    with app.app_context():
        job = long.delay()
        assert job.progress is None
        thread = _run_in_thread(app, afterward)
        try:
            assert reported.wait(5)
            assert job.progress is None  # the handle keeps its snapshot until refresh()
            job.refresh()
            assert job.state == State.RUNNING
            assert (job.progress, job.message) == (0.5, "half way")
        finally:
            go.set()
            thread.join(5)
        assert job.result(timeout=1) == "done"


def test_current_job_is_the_running_job_inside_a_task(app: Flask, afterward: Afterward) -> None:
    seen: dict[str, object] = {}

    @afterward.task
    def inspect_self() -> None:
        seen["truthy"] = bool(current_job)
        seen["id"] = current_job.id
        seen["attempt"] = current_job.attempt

    with app.app_context():
        job = inspect_self.delay()
        worker_for(app, afterward).run_once()
    assert seen == {"truthy": True, "id": job.id, "attempt": 1}


def test_outside_a_job_progress_does_nothing_and_current_job_is_falsy(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task
    def step() -> str:
        progress(0.5, "half way")
        return "ran"

    assert not current_job
    progress(0.3, "nobody listens")
    with app.app_context():
        assert step() == "ran"  # a plain call is not a job either
    with pytest.raises(RuntimeError, match="Not inside a running flask-afterward job"):
        _ = current_job.id


def test_afterward_job_finds_a_job_by_id(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def add(a: int, b: int) -> int:
        return a + b

    with app.app_context():
        job_id = add.delay(1, 2).id
        found = afterward.job(job_id)
        assert (found.id, found.state) == (job_id, State.QUEUED)
        worker_for(app, afterward).run_once()
        assert afterward.job(job_id).result(timeout=0) == 3
    assert afterward.job(job_id, app=app).state == State.SUCCEEDED


def test_unknown_and_expired_ids_raise_job_not_found(app: Flask, afterward: Afterward) -> None:
    @afterward.task(result_ttl=60)
    def noop() -> None:
        pass

    with app.app_context():
        with pytest.raises(JobNotFound, match="never existed or expired"):
            afterward.job("no-such-job")
        with pytest.raises(LookupError):  # catchable by its natural type
            afterward.job("")

        job = noop.delay()
        worker_for(app, afterward).run_once()
        job.refresh()
        assert store_of(app).prune(time.time() + 61) == 1
        with pytest.raises(JobNotFound, match="no longer exists"):
            job.refresh()
        with pytest.raises(JobNotFound):
            afterward.job(job.id)


def test_refresh_reads_the_store_again(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def noop() -> int:
        return 7

    with app.app_context():
        job = noop.delay()
        worker_for(app, afterward).run_once()
        assert job.state == State.QUEUED  # a snapshot, not a live view
        job.refresh()
    assert job.state == State.SUCCEEDED
    assert job.record.attempts == 1
