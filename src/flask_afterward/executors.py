"""Executors decide who runs a job; the store of record keeps it either way.

:class:`LocalExecutor` is our own worker threads in this process (``AFTERWARD_WORKERS``),
started on first use, plus whatever ``flask afterward worker`` processes pull from the
same store. :class:`EagerExecutor` runs each job at its ``.delay()``
(``AFTERWARD_EAGER``, for tests). Tier 3 adds Celery and RQ executors, which carry only
the job id to their workers. All of them run attempts with the one
:class:`~flask_afterward.runner.Runner`; see ``docs/engines.rst``.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import socket
import threading
import typing as t
import weakref

import click

from .records import ALL_CAPABILITIES
from .records import Capability
from .records import State
from .runner import Attempt
from .runner import Runner
from .worker import WorkerGroup

if t.TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .records import JobRecord
    from .stores.base import QueueStore
    from .stores.base import Store
    from .tasks import Task

Tasks: t.TypeAlias = "cabc.Mapping[str, Task[..., t.Any]]"


class Executor(t.Protocol):
    """Who runs the jobs of one app's store."""

    #: a short name for messages (``"local"``, ``"eager"``)
    name: t.ClassVar[str]
    #: what this executor honours (see :class:`~flask_afterward.records.Capability`)
    capabilities: t.ClassVar[frozenset[Capability]]

    def start(self) -> None:
        """Called for every request: start what runs jobs in this process, if anything.
        Must cost next to nothing once started."""
        ...

    def submit(self, record: JobRecord) -> JobRecord:
        """``record`` was just stored queued: see that it runs once due. Returns the
        record as it stands now (in eager mode, finished)."""
        ...

    def release(self, job_ids: cabc.Sequence[str]) -> None:
        """These deferred jobs were just made queued: see that they run."""
        ...

    def stop_running(self, job_id: str) -> None:
        """A cancel was requested for this running job: stop it by the executor's own
        means, beyond the cooperative stop at its next ``progress()``, if it has any."""
        ...

    def stop(self) -> None:
        """Stop taking jobs now (shutdown has begun); running ones go on."""
        ...

    def close(self, timeout: float) -> int:
        """Give running jobs ``timeout`` seconds, then put the rest back in the queue;
        return how many were put back."""
        ...


#: Executors of this process, so that a forked child forgets the parent's threads.
_LOCAL_EXECUTORS: weakref.WeakSet[LocalExecutor] = weakref.WeakSet()


class LocalExecutor:
    """Our worker threads, in each process that serves requests or enqueues jobs.

    They start on the first request (or the first job queued in this process), not in
    ``init_app``, so a server that forks after loading the app (gunicorn ``--preload``)
    starts them in each child. A forked child forgets its parent's group (see
    :func:`_forget_parent_workers`), so the per-request check is one attribute read.
    """

    name: t.ClassVar = "local"
    capabilities: t.ClassVar = ALL_CAPABILITIES

    def __init__(self, app: Flask, store: QueueStore, tasks: Tasks, settings: Settings) -> None:
        self.app = app
        self.store = store
        self.tasks = tasks
        self.settings = settings
        self.workers: WorkerGroup | None = None
        #: False for the CLI worker's group: its command stops it, not our close()
        self._is_owned = True
        self._is_started = False
        self._lock = threading.Lock()
        _LOCAL_EXECUTORS.add(self)

    def start(self) -> None:
        if self._is_started:
            return
        with self._lock:
            if self._is_started:
                return
            if self.settings.workers > 0:
                self.workers = WorkerGroup(
                    self.app,
                    self.store,
                    self.tasks,
                    threads=self.settings.workers,
                    lease=self.settings.lease,
                )
                self.workers.start()
                self._is_owned = True
            self._is_started = True

    def use_workers(self, workers: WorkerGroup) -> None:
        """Make ``workers`` this process's workers (``flask afterward worker``).

        Jobs enqueued in this process (by other jobs) then wake them, and no
        ``AFTERWARD_WORKERS`` group starts beside them.
        """
        with self._lock:
            self.workers = workers
            self._is_owned = False
            self._is_started = True

    def submit(self, record: JobRecord) -> JobRecord:
        self._wake()
        return record

    def release(self, job_ids: cabc.Sequence[str]) -> None:
        self._wake()

    def _wake(self) -> None:
        """A job became runnable in this process: start or wake the local workers.

        An enqueue in a CLI command (``flask shell``, an app's ``flask send-mails``)
        starts none: the command would run its jobs itself, then wait for them at
        exit. Its jobs wait for a web process's or ``flask afterward worker``'s.
        """
        if not self._is_started and click.get_current_context(silent=True) is not None:
            return
        self.start()
        if self.workers is not None:
            self.workers.wake.set()

    def stop_running(self, job_id: str) -> None:
        """Nothing more: Python cannot stop a thread; the job stops at ``progress()``."""

    def _own_workers(self) -> WorkerGroup | None:
        return self.workers if self._is_owned else None

    def stop(self) -> None:
        workers = self._own_workers()
        if workers is not None:
            workers.stop.set()
            workers.wake.set()

    def close(self, timeout: float) -> int:
        workers = self._own_workers()
        self.workers = None
        return 0 if workers is None else workers.close(timeout)

    def _forget(self) -> None:
        # The threads stayed in the parent; the lock may have been held at the fork.
        self._lock = threading.Lock()
        self.workers = None
        self._is_started = False


def _forget_parent_workers() -> None:
    for executor in list(_LOCAL_EXECUTORS):
        executor._forget()


os.register_at_fork(after_in_child=_forget_parent_workers)


class EagerExecutor:
    """Runs each job at the call that queued it, with its retries (``AFTERWARD_EAGER``).

    For tests: the job runs before ``.delay()`` returns, through the same runner and
    store transitions as a worker's job, and what it raised on its last attempt
    propagates to the caller (the job is stored failed first). Delays, deferral and
    back-off do not wait; a timeout stops the job at its next ``progress()``.
    """

    name: t.ClassVar = "eager"
    #: It runs in the caller, so nothing else can stop a running job.
    capabilities: t.ClassVar = ALL_CAPABILITIES - {Capability.CANCEL_RUNNING}

    def __init__(self, app: Flask, store: Store, tasks: Tasks, settings: Settings) -> None:
        self.store = store
        self.lease = settings.lease
        worker = f"{socket.gethostname()}:{os.getpid()}:eager"
        self.runner = Runner(
            app, store, tasks, worker=worker, lease=settings.lease, is_in_caller_context=True
        )

    def start(self) -> None:
        pass

    def submit(self, record: JobRecord) -> JobRecord:
        runner = self.runner
        while (started := self.store.start(record.id, runner.worker, self.lease)) is not None:
            outcome = runner.run(Attempt(started, self.lease))
            assert outcome is not None  # no one enforces the timeout but the job
            runner.record(started, outcome)
            if outcome.state == State.FAILED and outcome.exception is not None:
                outcome.exception.add_note(
                    f"(flask-afterward: eager job {record.id} of {record.task} failed)"
                )
                raise outcome.exception
            if outcome.state != State.QUEUED:  # a retry runs again at once
                break
        return self.store.get(record.id) or record

    def release(self, job_ids: cabc.Sequence[str]) -> None:
        for job_id in job_ids:
            record = self.store.get(job_id)
            if record is not None:
                self.submit(record)

    def stop_running(self, job_id: str) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self, timeout: float) -> int:
        return 0
