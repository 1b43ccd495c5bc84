"""Workers: claim jobs from a ``QueueStore`` and run them inside the app context.

A :class:`Worker` is one loop (Huey's ``Worker.loop``, rq's ``work(burst=True)``): one
testable iteration, ``run_once``, and an idle back-off that resets after work. A
:class:`WorkerGroup` runs several in named threads, plus one monitor thread that
extends the leases of running jobs, enforces timeouts and prunes expired jobs. Each
attempt runs through :class:`~flask_afterward.runner.Runner`, as on every executor.

Batches: while its jobs are quick (under :data:`QUICK_JOB` seconds each), a worker claims
up to :data:`BATCH` jobs in one transaction, runs them one by one, and records their
successes together with its next claim. A write transaction costs far more than a
no-op job, and another process writing in between (a web process enqueueing) empties
SQLite's page cache: one claim per job made a busy worker and its producer take turns
on the write lock, job by job. A slow job ends the batching: the jobs still waiting
go back to the queue for other workers, and the next claim takes one job.

Timeouts: Python cannot kill a thread. A job over its timeout is marked failed (or
queued for a retry) at once, its thread is *abandoned* — it keeps running the function
until it returns, its result is discarded, then it exits — and a new thread takes its
place, so the group keeps its capacity. The job's next ``progress()`` call raises
:class:`~flask_afterward.errors.JobTimeout`, so cooperative jobs stop early.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import logging
import math
import os
import secrets
import socket
import threading
import time
import typing as t

from .errors import JobTimeout
from .records import JobRecord
from .records import State
from .runner import Attempt
from .runner import Outcome
from .runner import Runner
from .stores.base import observe

if t.TYPE_CHECKING:
    from flask import Flask

    from .stores.base import QueueStore
    from .tasks import Task

logger = logging.getLogger(__name__)

#: Seconds between two prunes of finished jobs (``AFTERWARD_RESULT_TTL``) by a group.
PRUNE_INTERVAL: t.Final = 60.0
#: The most jobs a worker claims at once (see the module docstring).
BATCH: t.Final = 16
#: A worker claims a batch only while each of its jobs takes less than this (seconds),
#: so its successes wait at most about ``BATCH * QUICK_JOB`` to be recorded.
QUICK_JOB: t.Final = 0.005
#: Seconds a worker waits before its next claim when its last batch came back short
#: (it has caught up with whoever enqueues): enough for a few enqueues to commit, so
#: the next claim takes several jobs instead of taking turns with them one by one.
LINGER: t.Final = 0.005


class Worker:
    """Claims jobs from ``store`` (a few at a time while they are quick) and runs them.

    :param tasks: the registered tasks by name.
    :param queues: queues to take jobs from; None takes from all.
    :param lease: seconds a claim holds; the monitor extends it while a job runs.
    :param name: a label for the worker id and logs.
    """

    def __init__(
        self,
        app: Flask,
        store: QueueStore,
        tasks: cabc.Mapping[str, Task[..., t.Any]],
        *,
        queues: cabc.Sequence[str] | None = None,
        lease: float = 30.0,
        name: str = "worker",
        min_idle: float = 0.02,
        max_idle: float = 0.5,
    ) -> None:
        self.app = app
        self.store = store
        self.tasks = tasks
        self.queues = queues
        self.lease = lease
        self.min_idle = min_idle
        self.max_idle = max_idle
        #: unique per worker, so a lease names exactly one holder
        self.id = f"{socket.gethostname()}:{os.getpid()}:{name}:{secrets.token_hex(4)}"
        #: runs each attempt and records it, as on every executor
        self.runner = Runner(app, store, tasks, worker=self.id, lease=lease)
        #: the job being run, for the monitor
        self.current: Attempt | None = None
        #: set by the monitor when a job timed out: the loop ends after it
        self.is_abandoned = False
        #: jobs claimed in the last batch and not started yet; running under our lease
        self.claimed: collections.deque[JobRecord] = collections.deque()
        self._claimed_at = 0.0
        #: succeeded jobs and their outcomes, recorded with the next claim
        self._successes: list[tuple[JobRecord, Outcome]] = []
        #: how long the last job ran; a batch is claimed only after a quick one
        self._last_run = math.inf
        #: the last claim asked for a batch and got fewer jobs: the queue is shallow
        self._is_caught_up = False

    def run_once(self) -> bool:
        """Claim and run one job, and record its outcome. False if none was runnable."""
        try:
            return self._claim_and_run(limit=1)
        finally:
            self.flush()

    def _claim_and_run(self, *, limit: int = BATCH) -> bool:
        """Run the next job; a success is recorded with the next claim.

        Inside :meth:`run` the next claim follows at once, so holding the success back
        costs no visible delay, and they share one commit
        (``QueueStore.complete_and_claim_many``).
        """
        record = self._next(limit)
        if record is None:
            return False
        started = time.monotonic()
        self._execute(record)
        self._last_run = time.monotonic() - started
        return True

    def _next(self, limit: int) -> JobRecord | None:
        """The next job: from the batch while jobs are quick, else a new claim."""
        if self.claimed:
            if self._last_run < QUICK_JOB and time.monotonic() - self._claimed_at < self.lease / 3:
                try:
                    return self.claimed.popleft()
                except IndexError:  # the monitor gave them back meanwhile
                    pass
            else:
                self.give_back()
        limit = limit if self._last_run < QUICK_JOB else 1
        records = self._record_and_claim(limit)
        self._is_caught_up = 1 < limit and len(records) < limit
        if not records:
            return None
        self.claimed.extend(records[1:])
        return records[0]

    def _record_and_claim(self, limit: int) -> list[JobRecord]:
        """Record the held successes and claim up to ``limit`` jobs, in one commit."""
        done = self._successes
        is_ours, records = self.store.complete_and_claim_many(
            [(record.id, outcome.result) for record, outcome in done],
            self.id,
            self.queues,
            self.lease,
            limit,
        )
        self._claimed_at = time.monotonic()
        self._successes = []  # only now: a store error keeps them for flush()
        for (record, outcome), is_recorded in zip(done, is_ours, strict=True):
            self.runner.finished(record, outcome, is_recorded)
        return records

    def give_back(self) -> int:
        """Put the claimed jobs not started yet back in the queue, their attempt not
        counted; how many. Safe from another thread (the monitor)."""
        given = 0
        while True:
            try:
                record = self.claimed.popleft()
            except IndexError:
                return given
            if self.store.requeue(record.id, self.id):
                given += 1

    def flush(self) -> None:
        """Record held successes, and give back jobs claimed but not started."""
        self.give_back()
        if self._successes:
            self._record_and_claim(0)

    def run(
        self,
        stop: threading.Event,
        *,
        burst: bool = False,
        wake: threading.Event | None = None,
    ) -> None:
        """Run jobs until ``stop`` is set (or, with ``burst``, until none is runnable).

        Idle, it polls with a back-off from ``min_idle`` to ``max_idle`` seconds;
        ``wake`` (set when this process enqueues) cuts the wait short.
        """
        try:
            self._loop(stop, burst=burst, wake=wake)
        finally:
            self.flush()

    def _loop(self, stop: threading.Event, *, burst: bool, wake: threading.Event | None) -> None:
        delay = self.min_idle
        while not stop.is_set() and not self.is_abandoned:
            try:
                found = self._claim_and_run()
            except Exception:
                # The store failed (a locked or vanished database): keep the thread,
                # or the group would lose capacity for good; back off like when idle.
                logger.exception("Worker %s could not claim or record a job.", self.id)
                found = False
            if found:
                delay = self.min_idle
                if self._is_caught_up and not self.claimed:
                    stop.wait(LINGER)
                continue
            if burst:
                return
            if wake is not None and wake.wait(delay):
                wake.clear()
                delay = self.min_idle
                continue
            if wake is None:
                stop.wait(delay)
            delay = min(delay * 2, self.max_idle)

    def _execute(self, record: JobRecord) -> None:
        """Run one claimed job. A success is held for the next claim to record."""
        attempt = self.current = Attempt(record, self.lease, is_watched=True)
        try:
            outcome = self.runner.run(attempt)
        finally:
            self.current = None
        if outcome is None:  # timed out: the monitor recorded it
            return
        if outcome.state == State.SUCCEEDED:
            self._successes.append((record, outcome))
        else:
            self.runner.record(record, outcome)


class WorkerGroup:
    """``threads`` workers in named threads, plus a monitor; owned and stopped here.

    :param name: thread name prefix: ``{name}-1`` … and ``{name}-monitor``.
    """

    def __init__(
        self,
        app: Flask,
        store: QueueStore,
        tasks: cabc.Mapping[str, Task[..., t.Any]],
        *,
        threads: int,
        queues: cabc.Sequence[str] | None = None,
        lease: float = 30.0,
        name: str = "flask-afterward-worker",
        min_idle: float = 0.02,
        max_idle: float = 0.5,
    ) -> None:
        self.app = app
        self.store = store
        self.tasks = tasks
        self.size = threads
        #: the idle poll back-off of each worker, from ``min_idle`` to ``max_idle`` s
        self.idle = (min_idle, max_idle)
        self.queues = queues
        self.lease = lease
        self.name = name
        #: set to stop claiming; running jobs go on
        self.stop = threading.Event()
        #: set to end an idle wait early (a job was enqueued in this process)
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[Worker, threading.Thread] = {}
        self._count = 0
        self._monitor: threading.Thread | None = None

    def start(self, *, burst: bool = False) -> None:
        """Start the worker threads and the monitor."""
        for _ in range(self.size):
            self._spawn(burst=burst)
        self._monitor = threading.Thread(
            target=self._watch, name=f"{self.name}-monitor", daemon=True
        )
        self._monitor.start()

    def _spawn(self, *, burst: bool = False) -> None:
        with self._lock:
            self._count += 1
            name = f"{self.name}-{self._count}"
            worker = Worker(
                self.app,
                self.store,
                self.tasks,
                queues=self.queues,
                lease=self.lease,
                name=name,
                min_idle=self.idle[0],
                max_idle=self.idle[1],
            )
            thread = threading.Thread(
                target=worker.run,
                args=(self.stop,),
                kwargs={"burst": burst, "wake": self.wake},
                name=name,
                daemon=True,
            )
            self._workers[worker] = thread
        thread.start()

    def _watch(self) -> None:
        tick = min(1.0, self.lease / 3)
        next_prune = time.monotonic()
        while not self.stop.wait(tick) or self.running():
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                self._prune()
            observe(self)  # dashboard: heartbeats, and the per-minute rollup once a minute
            for worker in self.workers():
                attempt = worker.current
                if attempt is not None:
                    self._check(worker, attempt)
            if self.stop.is_set():
                time.sleep(tick)  # still extending leases of jobs finishing at shutdown

    def _prune(self) -> None:
        """Delete finished jobs past their result TTL, so the store stays bounded
        without a cron job. Every group does it; a DELETE on an index is cheap."""
        try:
            pruned = self.store.prune(time.time())
        except Exception:
            logger.exception("Pruning finished jobs failed; trying again in a minute.")
            return
        if pruned:
            logger.info("Pruned %d finished jobs past their result TTL.", pruned)

    def _check(self, worker: Worker, attempt: Attempt) -> None:
        now = time.monotonic()
        record = attempt.record
        if worker.claimed and now - attempt.started >= QUICK_JOB:
            # A slow job: the jobs of its batch go back to the queue, for other
            # workers, instead of waiting behind it (their leases are not extended).
            worker.give_back()
        if attempt.is_overdue(now) and not attempt.is_timed_out:
            attempt.is_timed_out = True
            worker.is_abandoned = True
            error = JobTimeout(f"Job {record.id} ran over its timeout of {record.timeout} s.")
            worker.runner.record(record, worker.runner.failure(record, error))
            logger.warning(
                "Job %s (%s) timed out; its thread %s is abandoned and replaced.",
                record.id,
                record.task,
                self._workers[worker].name,
            )
            worker.give_back()
            if not self.stop.is_set():
                self._spawn()
        elif not attempt.is_timed_out and now >= attempt.next_extension:
            attempt.next_extension = now + self.lease / 3
            if not self.store.extend_lease(record.id, worker.id, self.lease):
                # Not ours any more (expired, or requeued at shutdown): say so once,
                # not every tick for as long as the thread runs on.
                attempt.next_extension = math.inf
                logger.warning("Job %s lost its lease while running.", record.id)

    def workers(self) -> list[Worker]:
        """The workers whose threads are alive (abandoned ones included)."""
        with self._lock:
            return [w for w, thread in self._workers.items() if thread.is_alive()]

    def running(self) -> list[Worker]:
        """Workers running a job now."""
        return [w for w in self.workers() if w.current is not None]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every worker thread to end; False if some still run at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._workers.values())
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(thread.is_alive() for thread in threads)

    def requeue_running(self) -> int:
        """Put the jobs running now back in the queue, their attempt given back.

        For shutdown: their threads go on, but whatever they record is discarded.
        Returns how many were requeued.
        """
        requeued = 0
        for worker in self.workers():
            requeued += worker.give_back()
            attempt = worker.current
            if attempt is not None and self.store.requeue(attempt.record.id, worker.id):
                requeued += 1
        return requeued

    def close(self, timeout: float = 30.0) -> int:
        """Stop claiming, give running jobs ``timeout`` seconds, requeue the rest.

        Returns how many jobs were put back in the queue for another worker.
        """
        self.stop.set()
        self.wake.set()
        if self.join(timeout):
            return 0
        requeued = self.requeue_running()
        if requeued:
            logger.warning(
                "%d running jobs did not finish within %.1f s of shutdown; they are back "
                "in the queue for another worker.",
                requeued,
                timeout,
            )
        return requeued
