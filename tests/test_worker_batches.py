"""Workers claim quick jobs in batches: what that saves, and what it must not change.

A worker that has just run a quick job claims up to ``BATCH`` jobs in one transaction
and records their successes with its next claim. Each job still runs once, a slow job
does not hold the rest of its batch, and a stopping worker gives back what it has not
started. Jobs are ordered by ``eta`` so that which job lands in which batch is certain.
"""

from __future__ import annotations

import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import UTC

import pytest
from flask import Flask

from flask_afterward import Afterward
from flask_afterward import State
from flask_afterward.jobs import Job
from flask_afterward.worker import BATCH
from flask_afterward.worker import Worker
from flask_afterward.worker import WorkerGroup
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_WORKERS=0)
    return app


class _Counting:
    """The app's store, counting the claims a worker makes and what they ask for."""

    def __init__(self, store: t.Any) -> None:
        self._store = store
        self.limits: list[int] = []

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._store, name)

    def complete_and_claim_many(self, *args: t.Any) -> t.Any:
        self.limits.append(args[-1])
        return self._store.complete_and_claim_many(*args)


def ago(seconds: float) -> datetime:
    """A due ``eta``: the older, the earlier a claim takes the job."""
    return datetime.now(UTC) - timedelta(seconds=seconds)


def refreshed(job: Job[t.Any]) -> Job[t.Any]:
    job.refresh()
    return job


def test_a_busy_worker_claims_quick_jobs_in_batches_and_runs_each_once(
    app: Flask, afterward: Afterward
) -> None:
    ran: list[int] = []

    @afterward.task
    def quick(n: int) -> int:
        ran.append(n)
        return n

    with app.app_context():
        jobs = [quick.delay(n) for n in range(5 * BATCH)]
        store = _Counting(store_of(app))
        Worker(app, store, afterward.tasks).run(threading.Event(), burst=True)  # type: ignore[arg-type]

        assert sorted(ran) == list(range(5 * BATCH))
        for n, job in enumerate(jobs):
            assert job.result(timeout=0) == n
            assert job.record.attempts == 1
    # The first claim takes one job (nothing is known about them yet), later ones a
    # batch: far fewer transactions than jobs. (A job slower than QUICK_JOB on a busy
    # machine makes the next claim take one job again, hence no exact count.)
    assert store.limits[0] == 1
    assert BATCH in store.limits
    assert len(store.limits) < len(jobs) / 2


def test_a_slow_job_gives_the_rest_of_its_batch_back_to_the_queue(
    app: Flask, afterward: Afterward
) -> None:
    started, release = threading.Event(), threading.Event()

    @afterward.task
    def quick() -> str:
        return "quick"

    @afterward.task
    def slow() -> str:
        started.set()
        release.wait(10)
        return "slow"

    # Lease 3 s: the monitor looks every second.
    group = WorkerGroup(app, store_of(app), afterward.tasks, threads=1, lease=3.0)
    with app.app_context():
        first = quick.options(eta=ago(30)).delay()  # claimed alone, and quick
        blocker = slow.options(eta=ago(20)).delay()  # heads the batch claimed next
        behind = [quick.options(eta=ago(10 - n)).delay() for n in range(3)]
        group.start()
        try:
            assert started.wait(5)
            # While the slow job runs, the jobs claimed with it go back to the queue,
            # within a monitor tick, with their attempt given back.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(
                refreshed(job).state != State.QUEUED for job in behind
            ):
                release.wait(0.02)
            assert [job.state for job in behind] == [State.QUEUED] * 3
            assert [job.record.attempts for job in behind] == [0, 0, 0]
        finally:
            release.set()
        assert blocker.result(timeout=5) == "slow"
        assert [job.result(timeout=5) for job in [first, *behind]] == ["quick"] * 4
        assert [job.record.attempts for job in behind] == [1, 1, 1]
        assert group.close(timeout=5) == 0


def test_a_stopping_worker_gives_back_the_jobs_it_has_not_started(
    app: Flask, afterward: Afterward
) -> None:
    stop = threading.Event()

    @afterward.task
    def quick() -> str:
        return "quick"

    @afterward.task
    def stopper() -> str:
        stop.set()  # as a SIGTERM would, while the batch has more jobs
        return "stopped"

    with app.app_context():
        first = quick.options(eta=ago(30)).delay()
        last = stopper.options(eta=ago(20)).delay()
        behind = [quick.options(eta=ago(10 - n)).delay() for n in range(3)]

        Worker(app, store_of(app), afterward.tasks).run(stop)

        # The jobs that ran are recorded, the last one by the final flush,
        assert first.result(timeout=0) == "quick"
        assert last.result(timeout=0) == "stopped"
        # and the ones claimed with it are queued again, as if never claimed.
        for job in behind:
            job.refresh()
            assert job.state == State.QUEUED
            assert job.record.attempts == 0
            assert job.record.worker is None
