"""Workers: context, retries, failures, timeouts, leases, shutdown, in-process threads.

Jobs run when a test drives a ``Worker`` (``run_once``, ``run(burst=True)``) or a
``WorkerGroup`` it starts and closes; waits are on events and ``Job.result(timeout=)``.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import json
import os
import select
import signal
import threading
import time
import typing as t

import pytest
from flask import current_app
from flask import Flask
from flask import g
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import select as sql_select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_afterward import Afterward
from flask_afterward import current_job
from flask_afterward import progress
from flask_afterward import State
from flask_afterward.errors import JobFailed
from flask_afterward.errors import JobTimeout
from flask_afterward.executors import LocalExecutor
from flask_afterward.records import error_summary
from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.runner import backoff
from flask_afterward.signals import job_enqueued
from flask_afterward.signals import job_finished
from flask_afterward.signals import job_started
from flask_afterward.state import get_state
from flask_afterward.worker import Worker
from flask_afterward.worker import WorkerGroup
from tests.tier2 import group_for
from tests.tier2 import run_burst
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES
from tests.tier2 import worker_for
from tests.tier2 import worker_threads


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_WORKERS=0)
    return app


class Boom(Exception):
    """A task failure with a recognizable type."""


# --- backoff, a pure function ---------------------------------------------------------


def test_backoff_doubles_from_its_base_without_jitter() -> None:
    assert [backoff(n, base=1.5, jitter=0) for n in (1, 2, 3, 4)] == [1.5, 3.0, 6.0, 12.0]
    assert backoff(3, base=0, jitter=0.25) == 0


def test_backoff_is_capped_even_for_huge_attempt_numbers() -> None:
    assert backoff(20, base=1, cap=60, jitter=0) == 60
    assert backoff(10**6, base=1, jitter=0) == 3600  # the default cap; no overflow


def test_backoff_jitter_only_shortens_within_its_fraction() -> None:
    samples = [backoff(3, base=2, jitter=0.25) for _ in range(500)]
    assert all(6.0 <= s <= 8.0 for s in samples)
    assert len(set(samples)) > 100  # jobs that failed together spread out


def test_backoff_grows_with_each_attempt_despite_jitter() -> None:
    for attempt in range(1, 12):
        longest_before = max(backoff(attempt, base=1, jitter=0.25) for _ in range(50))
        shortest_after = min(backoff(attempt + 1, base=1, jitter=0.25) for _ in range(50))
        assert shortest_after > longest_before


# --- context --------------------------------------------------------------------------


def test_each_job_runs_in_an_app_context_torn_down_after_it(
    app: Flask, afterward: Afterward
) -> None:
    events: list[object] = []

    @app.teardown_appcontext
    def teardown(error: BaseException | None) -> None:
        events.append(("teardown", type(error).__name__ if error else None, g.get("mark")))

    @afterward.task
    def uses_app(fail: bool) -> str:
        assert g.get("mark") is None  # a fresh context per job
        g.mark = "set by the job"
        events.append("task")
        if fail:
            raise Boom("no")
        return str(current_app.name)

    with app.app_context():
        ok, failing = uses_app.delay(False), uses_app.delay(True)
    events.clear()  # the teardown of the context used to enqueue
    worker = worker_for(app, afterward)
    assert worker.run_once() and worker.run_once()  # outside any context of ours
    assert events == [
        "task",
        ("teardown", None, "set by the job"),
        "task",
        ("teardown", "Boom", "set by the job"),
    ]
    assert ok.result(timeout=0) == app.name
    with pytest.raises(JobFailed):
        failing.result(timeout=0)


class _Base(DeclarativeBase):
    pass


_db = SQLAlchemy(model_class=_Base)


class Note(_db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


def test_a_flask_sqlalchemy_task_commits_and_uncommitted_work_is_dropped(
    app: Flask, afterward: Afterward, tmp_path: t.Any
) -> None:
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    _db.init_app(app)

    @afterward.task
    def add_note(text: str, commit: bool) -> None:
        _db.session.add(Note(text=text))
        if commit:
            _db.session.commit()

    with app.app_context():
        _db.create_all()
        add_note.delay("kept", True)
        add_note.delay("dropped", False)
    try:
        # In another thread, as in-process workers do: its own session, then removed.
        thread = threading.Thread(target=run_burst, args=(app, afterward))
        thread.start()
        thread.join(10)
        with app.app_context():
            texts = _db.session.execute(sql_select(Note.text)).scalars().all()
            assert texts == ["kept"]
    finally:
        with app.app_context():
            _db.engine.dispose()


def test_async_def_tasks_run_to_completion(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    with app.app_context():
        job = double.delay(21)
        worker_for(app, afterward).run_once()
        assert job.result(timeout=0) == 42  # type: ignore[comparison-overlap]


# --- retries and failures -------------------------------------------------------------


def test_a_failing_job_is_retried_until_it_succeeds(app: Flask, afterward: Afterward) -> None:
    attempts: list[int] = []

    @afterward.task(retries=2, retry_backoff=0)
    def flaky() -> str:
        attempts.append(current_job.attempt)
        if len(attempts) < 3:
            raise Boom(f"attempt {len(attempts)}")
        return "finally"

    with app.app_context():
        job = flaky.delay()
        run_burst(app, afterward)
        assert job.result(timeout=0) == "finally"
    assert attempts == [1, 2, 3]
    assert job.record.attempts == 3


def test_a_retry_waits_an_exponential_back_off_with_jitter(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task(retries=5, retry_backoff=10)
    def broken() -> None:
        raise Boom("down")

    with app.app_context():
        job = broken.delay()
        worker = worker_for(app, afterward)
        before = time.time()
        assert worker.run_once() is True
        after = time.time()
        assert worker.run_once() is False  # not runnable during its back-off
        job.refresh()
    assert job.state == State.QUEUED
    assert job.record.attempts == 1
    assert job.error is not None and job.error.startswith(f"{__name__}.Boom: down")
    # First retry: base 10 s, shortened by at most 25 % of jitter.
    assert before + 7.5 <= job.record.run_at <= after + 10


def test_a_job_that_keeps_failing_ends_failed_with_type_message_and_traceback(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task(retries=2, retry_backoff=0)
    def broken(what: str) -> None:
        raise Boom(f"{what} is down")

    with app.app_context():
        job = broken.delay("mail")
        run_burst(app, afterward)
        with pytest.raises(JobFailed, match=f"{__name__}.Boom: mail is down"):
            job.result(timeout=0)
    assert job.state == State.FAILED
    assert job.record.attempts == 3
    assert error_summary(job.error) == (f"{__name__}.Boom", "mail is down")
    assert job.error is not None
    assert "Traceback (most recent call last)" in job.error
    assert "in broken" in job.error


def _store_raw(app: Flask, task: str, payload: str) -> str:
    now = time.time()
    record = JobRecord(
        id=new_job_id(), task=task, payload=payload, state=State.QUEUED, created_at=now, run_at=now
    )
    return store_of(app).enqueue(record).id


@pytest.mark.parametrize(
    ("task", "payload", "why"),
    [
        ("no.such.task", '{"args":[],"kwargs":{}}', "no task named 'no.such.task'"),
        (None, "{not json", "stored arguments cannot be read"),
        (None, "[1, 2]", "stored arguments cannot be read"),
        (None, "null", "stored arguments cannot be read"),
        (None, '{"args":[]}', "stored arguments cannot be read"),
        (
            None,
            '{"args":[{"__afterward__":"decimal","value":"x"}],"kwargs":{}}',
            "stored arguments cannot be read",
        ),
        (
            None,
            '{"args":[{"__afterward__":"uuid","value":"x"}],"kwargs":{}}',
            "stored arguments cannot be read",
        ),
    ],
    ids=["unknown-task", "not-json", "list", "null", "no-kwargs", "bad-decimal", "bad-uuid"],
)
def test_a_job_that_cannot_run_fails_clearly_and_the_worker_goes_on(
    app: Flask, afterward: Afterward, task: str | None, payload: str, why: str
) -> None:
    runs: list[object] = []

    @afterward.task(retries=3)
    def fine(*args: object) -> str:
        runs.append(args)
        return "ok"

    with app.app_context():
        bad_id = _store_raw(app, task or fine.name, payload)
        good = fine.delay()
        run_burst(app, afterward)  # a crash here would end the test with the thread's error
        bad = afterward.job(bad_id)
        assert good.result(timeout=0) == "ok"
    assert bad.state == State.FAILED
    assert bad.record.attempts == 1  # no retry: retrying cannot help
    assert bad.error is not None and why in bad.error
    assert runs == [()]


# --- timeouts, leases and shutdown with a WorkerGroup ----------------------------------


def test_a_job_over_its_timeout_is_failed_and_its_thread_replaced(
    app: Flask, afterward: Afterward, caplog: pytest.LogCaptureFixture
) -> None:
    started, release = threading.Event(), threading.Event()
    ran_in: list[str] = []

    @afterward.task(timeout=0.3)
    def stuck() -> None:
        started.set()
        release.wait(10)  # ignores the timeout: no progress() calls

    @afterward.task
    def quick() -> str:
        ran_in.append(threading.current_thread().name)
        return "done"

    before = worker_threads()
    group = group_for(app, afterward, threads=1, lease=0.6)
    with app.app_context():
        job = stuck.delay()
        group.start()
        try:
            assert started.wait(5)
            other = quick.delay()
            with pytest.raises(JobFailed, match="JobTimeout: .* ran over its timeout of 0.3 s"):
                job.result(timeout=5)
            # The group kept its capacity: a new thread ran this while the stuck one
            # still runs.
            assert other.result(timeout=5) == "done"
            assert not release.is_set()
            names = {thread.name for thread in worker_threads() - before}
            assert names == {"flask-afterward-worker-1", "flask-afterward-worker-2"}
        finally:
            release.set()
            assert group.close(5) == 0
    assert ran_in == ["flask-afterward-worker-2"]
    job.refresh()
    assert job.state == State.FAILED  # the late end of the abandoned run is discarded
    # The monitor stopped extending the abandoned attempt's lease: no false alarms.
    assert "lost its lease" not in caplog.text


def test_a_timed_out_job_is_retried_when_it_has_retries_left(
    app: Flask, afterward: Afterward
) -> None:
    release = threading.Event()

    @afterward.task(timeout=0.3, retries=1, retry_backoff=0)
    def slow_first() -> int:
        if current_job.attempt == 1:
            release.wait(10)
        return current_job.attempt

    group = group_for(app, afterward, threads=1, lease=0.6)
    with app.app_context():
        job = slow_first.delay()
        group.start()
        try:
            assert job.result(timeout=5) == 2
        finally:
            release.set()
            group.close(5)
    assert job.record.attempts == 2


def test_a_cooperative_job_stops_at_progress_after_its_timeout(
    app: Flask, afterward: Afterward
) -> None:
    stopped = threading.Event()
    calls = 0

    @afterward.task(timeout=0.3)
    def polite() -> None:
        nonlocal calls
        while not stopped.wait(0.02):  # one unit of work per round
            calls += 1
            try:
                progress(0.1)
            except JobTimeout:
                stopped.set()
                raise

    # A name of its own: threads other tests left behind cannot be mistaken for it.
    group = group_for(app, afterward, threads=1, lease=0.6, name="polite-worker")
    with app.app_context():
        job = polite.delay()
        group.start()
        (first,) = [t for t in threading.enumerate() if t.name == "polite-worker-1"]
        try:
            assert stopped.wait(5)
            with pytest.raises(JobFailed, match="JobTimeout"):
                job.result(timeout=5)
            # Its thread ends with the job instead of running on.
            first.join(5)
            assert not first.is_alive()
        finally:
            group.close(5)
    assert calls >= 2


def test_the_lease_is_extended_so_a_long_job_is_not_claimed_twice(app: Flask) -> None:
    # Given a lease much shorter than the job, and an idle second worker polling
    app.config.update(AFTERWARD_LEASE=0.6, AFTERWARD_WORKERS=2)
    afterward = Afterward(app)
    starts: list[int] = []

    @afterward.task
    def long() -> int:
        starts.append(current_job.attempt)
        threading.Event().wait(2.0)  # the work: over three leases long
        return current_job.attempt

    try:
        with app.app_context():
            # When it runs on the in-process workers
            job = long.delay()
            # Then it ran once, on its first claim
            assert job.result(timeout=10) == 1
        assert job.record.attempts == 1
        assert starts == [1]
    finally:
        afterward.close(app, timeout=5)


def test_close_lets_a_running_job_finish(app: Flask, afterward: Afterward) -> None:
    started = threading.Event()

    @afterward.task
    def short() -> str:
        started.set()
        threading.Event().wait(0.3)
        return "finished"

    group = group_for(app, afterward, threads=1)
    with app.app_context():
        job = short.delay()
        group.start()
        assert started.wait(5)
        assert group.close(timeout=5) == 0
        assert job.result(timeout=0) == "finished"
    assert not group.workers()


def test_close_requeues_a_job_that_runs_past_its_timeout(
    app: Flask, afterward: Afterward, caplog: pytest.LogCaptureFixture
) -> None:
    started, release = threading.Event(), threading.Event()

    @afterward.task
    def long() -> str:
        started.set()
        release.wait(10)
        return "too late"

    group = group_for(app, afterward, threads=1, lease=0.6)
    with app.app_context():
        job = long.delay()
        group.start()
        try:
            assert started.wait(5)
            began = time.monotonic()
            assert group.close(timeout=0.2) == 1
            assert time.monotonic() - began < 3
            job.refresh()
            assert job.state == State.QUEUED
            assert job.record.attempts == 0  # a shutdown does not use up an attempt
            # The monitor finds the lease gone, says so once, and stops extending.
            deadline = time.monotonic() + 5
            while "lost its lease" not in caplog.text and time.monotonic() < deadline:
                release.wait(0.05)
            release.wait(0.6)  # three more monitor ticks
            assert caplog.text.count("lost its lease") == 1
        finally:
            release.set()
            assert group.join(5)
        job.refresh()
        assert job.state == State.QUEUED  # the abandoned run's result is discarded
        run_burst(app, afterward)  # another worker takes it
        assert job.result(timeout=0) == "too late"


# --- signals --------------------------------------------------------------------------


def test_signals_report_each_step_with_the_app_as_sender(app: Flask, afterward: Afterward) -> None:
    events: list[tuple[str, str, str | None]] = []
    senders: set[object] = set()

    def receiver(kind: str) -> cabc.Callable[..., None]:
        def receive(sender: object, job: t.Any, outcome: str | None = None) -> None:
            senders.add(sender)
            events.append((kind, job.record.task.rsplit(".", 1)[-1], outcome))

        return receive

    @afterward.task
    def ok() -> None:
        pass

    @afterward.task(retries=1, retry_backoff=0)
    def flaky() -> None:
        if current_job.attempt == 1:
            raise Boom()

    @afterward.task
    def broken() -> None:
        raise Boom()

    @afterward.task
    def quits() -> None:
        afterward.job(current_job.id).cancel()
        progress(0.5)

    with (
        job_enqueued.connected_to(receiver("enqueued")),
        job_started.connected_to(receiver("started")),
        job_finished.connected_to(receiver("finished")),
        app.app_context(),
    ):
        for task in (ok, flaky, broken, quits):
            task.delay()
            run_burst(app, afterward)

    assert senders == {app}
    assert events == [
        ("enqueued", "ok", None),
        ("started", "ok", None),
        ("finished", "ok", "succeeded"),
        ("enqueued", "flaky", None),
        ("started", "flaky", None),
        ("finished", "flaky", "retrying"),
        ("started", "flaky", None),
        ("finished", "flaky", "succeeded"),
        ("enqueued", "broken", None),
        ("started", "broken", None),
        ("finished", "broken", "failed"),
        ("enqueued", "quits", None),
        ("started", "quits", None),
        ("finished", "quits", "cancelled"),
    ]


def test_a_failing_signal_receiver_is_logged_and_the_job_still_finishes(
    app: Flask, afterward: Afterward, caplog: pytest.LogCaptureFixture
) -> None:
    @afterward.task
    def ok() -> str:
        return "done"

    def broken_receiver(sender: object, **kwargs: object) -> None:
        raise RuntimeError("receiver bug")

    with (
        job_started.connected_to(broken_receiver),
        job_finished.connected_to(broken_receiver),
        app.app_context(),
    ):
        job = ok.delay()
        run_burst(app, afterward)
        assert job.result(timeout=5) == "done"

    failures = [r for r in caplog.records if "receiver of the" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


# --- in-process workers ---------------------------------------------------------------


@pytest.fixture
def live_app(app: Flask) -> Flask:
    """The app with the default in-process workers."""
    app.config.pop("AFTERWARD_WORKERS")
    return app


def test_in_process_workers_start_on_the_first_request_not_at_init(live_app: Flask) -> None:
    before = worker_threads()
    afterward = Afterward(live_app)
    try:
        assert worker_threads() - before == set()

        live_app.test_client().get("/")

        names = {thread.name for thread in worker_threads() - before}
        assert names == {"flask-afterward-worker-1", "flask-afterward-worker-2"}
        assert any(t.name == "flask-afterward-worker-monitor" for t in threading.enumerate())
    finally:
        afterward.close(live_app, timeout=5)
    assert not (worker_threads() - before)


def test_in_process_workers_start_on_the_first_enqueue_and_run_the_job(
    live_app: Flask,
) -> None:
    before = worker_threads()
    afterward = Afterward(live_app)

    @afterward.task
    def where() -> str:
        return threading.current_thread().name

    try:
        with live_app.app_context():
            assert worker_threads() - before == set()
            assert where.delay().result(timeout=5).startswith("flask-afterward-worker-")
        assert len(worker_threads() - before) == 2
    finally:
        afterward.close(live_app, timeout=5)


def test_no_in_process_workers_with_afterward_workers_zero(app: Flask) -> None:
    before = worker_threads()
    afterward = Afterward(app)  # the fixture set AFTERWARD_WORKERS=0

    @afterward.task
    def noop() -> None:
        pass

    try:
        app.test_client().get("/")
        with app.app_context():
            job = noop.delay()
            with pytest.raises(JobTimeout):
                job.result(timeout=0.2)
        assert worker_threads() - before == set()
    finally:
        afterward.close(app, timeout=5)


def test_a_job_enqueued_in_this_process_wakes_an_idle_worker_at_once(live_app: Flask) -> None:
    afterward = Afterward(live_app)

    @afterward.task
    def ping() -> str:
        return "pong"

    # Given this process's workers: one thread whose idle wait is 30 s,
    state = get_state(live_app)
    assert isinstance(state.executor, LocalExecutor)
    group = WorkerGroup(
        live_app, store_of(live_app), afterward.tasks, threads=1, min_idle=30.0, max_idle=30.0
    )
    state.executor.use_workers(group)
    group.start()
    try:
        with live_app.app_context():
            # idle now: the first job's success is recorded by its next claim, which
            # found nothing else, so it waits 30 s unless woken
            assert ping.delay().result(timeout=10) == "pong"
            # When a job is enqueued here
            job = ping.delay()
            # Then the worker runs it at once, well before its 30 s idle wait ends
            assert job.result(timeout=10) == "pong"
    finally:
        group.close(5)
        afterward.close(live_app, timeout=5)


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_workers(live_app: Flask) -> None:
    live_app.config["AFTERWARD_STORE"] = "sqlite:///afterward.sqlite3"  # shared with the child
    before = worker_threads()
    afterward = Afterward(live_app)

    @afterward.task
    def where() -> list[object]:
        return [os.getpid(), threading.current_thread().name]

    try:
        # Given a parent whose workers ran a job, then stopped. They must not be
        # running at fork(): a thread inside SQLite at that instant would leave
        # SQLite's mutexes locked in the child (the fork-with-threads hazard).
        with live_app.app_context():
            assert where.delay().result(timeout=5)[0] == os.getpid()
        afterward.close(live_app, timeout=5)
        assert worker_threads() - before == set()

        # When a forked child (a gunicorn --preload worker) enqueues a job
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.close(read_fd)
                with live_app.app_context():
                    ran = where.delay().result(timeout=5)
                threads = sorted(t.name for t in worker_threads())
                os.write(write_fd, json.dumps({"ran": ran, "threads": threads}).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        try:
            report = _read_with_timeout(read_fd, 10)
        finally:
            os.close(read_fd)
            if not report:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

        # Then the child started workers of its own, and they ran it
        child = json.loads(report)
        assert child["ran"][0] == pid
        assert child["ran"][1].startswith("flask-afterward-worker-")
        assert child["threads"] == ["flask-afterward-worker-1", "flask-afterward-worker-2"]
    finally:
        afterward.close(live_app, timeout=5)


def test_a_job_whose_awaited_job_was_cancelled_fails_rather_than_ends_cancelled(
    app: Flask, afterward: Afterward
) -> None:
    # JobCancelled from another job's result() is this job's failure, not a cancel
    # of this job: it is retried and ends failed, with the reason.
    attempts: list[int] = []

    @afterward.task
    def child() -> None:
        pass

    @afterward.task(retries=1, retry_backoff=0)
    def parent(child_id: str) -> None:
        attempts.append(current_job.attempt)
        afterward.job(child_id).result(timeout=1)

    with app.app_context():
        awaited = child.delay()
        awaited.cancel()
        job = parent.delay(awaited.id)
        run_burst(app, afterward)
        with pytest.raises(JobFailed, match="JobCancelled: .* was cancelled"):
            job.result(timeout=0)
    assert attempts == [1, 2]


class _FlakyStore:
    """The app's store, except that the first claim fails like a locked database."""

    def __init__(self, store: t.Any) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._store, name)

    def complete_and_claim_many(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if self.failures == 0:
            self.failures += 1
            raise OSError("database is locked")
        return self._store.complete_and_claim_many(*args, **kwargs)


def test_a_store_error_is_logged_and_the_worker_goes_on(
    app: Flask, afterward: Afterward, caplog: pytest.LogCaptureFixture
) -> None:
    @afterward.task
    def ping() -> str:
        return "pong"

    store = _FlakyStore(store_of(app))
    worker = Worker(app, store, afterward.tasks, min_idle=0.01, max_idle=0.05)  # type: ignore[arg-type]
    stop = threading.Event()
    with app.app_context():
        job = ping.delay()
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()  # an exception ending the thread would fail this test
        try:
            assert job.result(timeout=5) == "pong"
        finally:
            stop.set()
            thread.join(5)
    assert store.failures == 1
    assert "database is locked" in caplog.text
