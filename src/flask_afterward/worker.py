"""Workers: claim jobs from a ``QueueStore`` and run them inside the app context.

A :class:`Worker` is one loop (Huey's ``Worker.loop``, rq's ``work(burst=True)``): one
testable iteration, ``run_once``, and an idle back-off that resets after work. A
:class:`WorkerGroup` runs several in named threads, plus one supervisor thread that
extends the leases of running jobs and enforces timeouts.

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
import functools
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
import typing as t

from . import serializers
from .errors import JobCancelled
from .errors import JobTimeout
from .errors import SerializationError
from .jobs import Job
from .jobs import reset_current
from .jobs import RunningJob
from .jobs import set_current
from .records import format_error
from .records import JobRecord
from .signals import job_finished
from .signals import job_started
from .stores.base import observe
from .tasks import call_task
from .tasks import Task

if t.TYPE_CHECKING:
    from blinker import NamedSignal
    from flask import Flask

    from .stores.base import QueueStore

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


def backoff(attempt: int, *, base: float, cap: float = 3600.0, jitter: float = 0.25) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): exponential, capped.

    ``base * 2 ** (attempt - 1)``, at most ``cap``, minus up to ``jitter`` of it at
    random so jobs that failed together do not retry in lockstep (Dramatiq's
    ``compute_backoff``).
    """
    delay = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return delay * (1.0 - jitter * random.random())


class _Attempt:
    """The job a worker is running now, as the supervisor sees it."""

    __slots__ = ("record", "started", "deadline", "next_extension", "is_timed_out")

    def __init__(self, record: JobRecord, lease: float) -> None:
        now = time.monotonic()
        self.record = record
        self.started = now
        self.deadline = None if record.timeout is None else now + record.timeout
        self.next_extension = now + lease / 3
        self.is_timed_out = False


class Worker:
    """Claims jobs from ``store`` (a few at a time while they are quick) and runs them.

    :param tasks: the registered tasks by name.
    :param queues: queues to take jobs from; None takes from all.
    :param lease: seconds a claim holds; the supervisor extends it while a job runs.
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
        #: the job being run, for the supervisor
        self.current: _Attempt | None = None
        #: set by the supervisor when a job timed out: the loop ends after it
        self.is_abandoned = False
        #: jobs claimed in the last batch and not started yet; running under our lease
        self.claimed: collections.deque[JobRecord] = collections.deque()
        self._claimed_at = 0.0
        #: succeeded jobs and their results, recorded with the next claim
        self._successes: list[tuple[Job[t.Any], str]] = []
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
        self._execute(record, defer_success=True)
        self._last_run = time.monotonic() - started
        return True

    def _next(self, limit: int) -> JobRecord | None:
        """The next job: from the batch while jobs are quick, else a new claim."""
        if self.claimed:
            if self._last_run < QUICK_JOB and time.monotonic() - self._claimed_at < self.lease / 3:
                try:
                    return self.claimed.popleft()
                except IndexError:  # the supervisor gave them back meanwhile
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
            [(job.id, result) for job, result in done], self.id, self.queues, self.lease, limit
        )
        self._claimed_at = time.monotonic()
        self._successes = []  # only now: a store error keeps them for flush()
        for (job, _), is_recorded in zip(done, is_ours, strict=True):
            self._finish(job, is_recorded, "succeeded")
        return records

    def give_back(self) -> int:
        """Put the claimed jobs not started yet back in the queue, their attempt not
        counted; how many. Safe from another thread (the supervisor)."""
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

    def execute(self, record: JobRecord) -> None:
        """Run one claimed job and record its outcome. Exceptions never escape."""
        self._execute(record, defer_success=False)

    def _execute(self, record: JobRecord, *, defer_success: bool) -> None:
        task = self.tasks.get(record.task)
        if task is None:
            self._give_up(record, f"no task named {record.task!r} is registered")
            return
        try:
            args, kwargs = serializers.loads_call(record.payload)
        except Exception as error:  # e.g. decimal.InvalidOperation, not a ValueError
            self._give_up(record, f"its stored arguments cannot be read ({error!r})")
            return
        attempt = self.current = _Attempt(record, self.lease)
        job: Job[t.Any] = Job(record, self.store)
        _send(job_started, self.app, job=job)
        token = set_current(RunningJob(record, functools.partial(self._report, attempt)))
        try:
            with self.app.app_context():
                value = call_task(task, args, kwargs)
            result = serializers.dumps(value, what=f"the result of {task.name}")
        except JobCancelled as error:
            if self._is_cancel_requested(record.id):
                self._finish(job, self.store.mark_cancelled(record.id, self.id), "cancelled")
            else:  # from another job's result(): a failure of this one
                self.fail(record, job, format_error(error))
        except JobTimeout as error:
            if not attempt.is_timed_out:  # else the supervisor has failed it already
                self.fail(record, job, format_error(error))
        except SerializationError as error:
            self.fail(record, job, format_error(error), may_retry=False)
        except Exception as error:
            self.fail(record, job, format_error(error))
        else:
            if defer_success:
                self._successes.append((job, result))
            else:
                self._finish(job, self.store.complete(record.id, self.id, result), "succeeded")
        finally:
            reset_current(token)
            self.current = None

    def _is_cancel_requested(self, job_id: str) -> bool:
        record = self.store.get(job_id)
        return record is not None and record.is_cancel_requested

    def _report(self, attempt: _Attempt, fraction: float, message: str | None) -> None:
        if attempt.is_timed_out:
            raise JobTimeout(f"Job {attempt.record.id} ran over its timeout.")
        if self.store.set_progress(attempt.record.id, self.id, fraction, message):
            raise JobCancelled(f"Job {attempt.record.id} was cancelled.")

    def fail(
        self, record: JobRecord, job: Job[t.Any], error: str, *, may_retry: bool = True
    ) -> None:
        """Record a failed attempt: a retry with back-off if any is left, else failed."""
        retry_at = delay = None
        if may_retry and record.attempts <= record.max_retries:
            delay = backoff(record.attempts, base=record.retry_backoff)
            retry_at = time.time() + delay
        is_ours = self.store.fail(record.id, self.id, error, retry_at)
        summary = error.split("\n", 1)[0]
        if delay is not None:
            logger.info(
                "Job %s (%s) failed on attempt %d, retrying in %.1f s: %s",
                record.id,
                record.task,
                record.attempts,
                delay,
                summary,
            )
            self._finish(job, is_ours, "retrying")
        else:
            logger.warning(
                "Job %s (%s) failed on its last attempt (%d): %s\n%s",
                record.id,
                record.task,
                record.attempts,
                summary,
                error.split("\n", 1)[-1],
            )
            self._finish(job, is_ours, "failed")

    def _give_up(self, record: JobRecord, why: str) -> None:
        error = (
            f"flask_afterward.errors.JobFailed: job {record.id} cannot run: {why}. Deploy "
            "code that defines the task, then run 'flask afterward retry ID'."
        )
        logger.error("Job %s (%s) cannot run: %s.", record.id, record.task, why)
        self.fail(record, Job(record, self.store), error, may_retry=False)

    def _finish(self, job: Job[t.Any], is_ours: bool, outcome: str) -> None:
        if not is_ours:
            # Our lease expired (or the timeout failed it) and the job moved on.
            logger.warning(
                "Job %s finished (%s) after its worker lost it; the outcome is discarded.",
                job.id,
                outcome,
            )
            return
        logger.debug("Job %s (%s) %s.", job.id, job.record.task, outcome)
        _send(job_finished, self.app, job=job, outcome=outcome)


def _send(signal: NamedSignal, app: Flask, **kwargs: t.Any) -> None:
    """Send a signal; a receiver that raises is logged and must not strand the job."""
    try:
        signal.send(app, **kwargs)
    except Exception:
        logger.exception("A receiver of the %s signal failed.", signal.name)


class WorkerGroup:
    """``threads`` workers in named threads, plus a supervisor; owned and stopped here.

    :param name: thread name prefix: ``{name}-1`` … and ``{name}-supervisor``.
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
    ) -> None:
        self.app = app
        self.store = store
        self.tasks = tasks
        self.size = threads
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
        self._supervisor: threading.Thread | None = None

    def start(self, *, burst: bool = False) -> None:
        """Start the worker threads and the supervisor."""
        for _ in range(self.size):
            self._spawn(burst=burst)
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"{self.name}-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, *, burst: bool = False) -> None:
        with self._lock:
            self._count += 1
            name = f"{self.name}-{self._count}"
            worker = Worker(
                self.app, self.store, self.tasks, queues=self.queues, lease=self.lease, name=name
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

    def _supervise(self) -> None:
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

    def _check(self, worker: Worker, attempt: _Attempt) -> None:
        now = time.monotonic()
        record = attempt.record
        if worker.claimed and now - attempt.started >= QUICK_JOB:
            # A slow job: the jobs of its batch go back to the queue, for other
            # workers, instead of waiting behind it (their leases are not extended).
            worker.give_back()
        if attempt.deadline is not None and now >= attempt.deadline and not attempt.is_timed_out:
            attempt.is_timed_out = True
            worker.is_abandoned = True
            error = JobTimeout(f"Job {record.id} ran over its timeout of {record.timeout} s.")
            worker.fail(record, Job(record, self.store), format_error(error))
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
