"""Jobs: their states, their stored data (:class:`JobRecord`) and the handle users hold.

The split follows procrastinate and arq: a :class:`JobRecord` is one immutable row as
a store returns it; a :class:`Job` is a thin handle that reads the store again when
asked. Inside a running job, :func:`progress` and :data:`current_job` reach the job
being run through a context variable the worker sets.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import secrets
import time
import traceback
import typing as t
from datetime import datetime
from datetime import UTC

from werkzeug.local import LocalProxy

from . import serializers
from .errors import JobCancelled
from .errors import JobFailed
from .errors import JobNotFound
from .errors import JobTimeout

if t.TYPE_CHECKING:
    from .stores.base import Store

R = t.TypeVar("R")


class State(enum.StrEnum):
    """Where a job is in its life. Stored as its value; stable across versions."""

    DEFERRED = "deferred"  #: persisted, waiting for its response to be delivered
    QUEUED = "queued"  #: runnable at or after ``run_at``
    RUNNING = "running"  #: claimed by a worker that holds a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States a job never leaves.
TERMINAL: t.Final = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
#: States a ``unique`` key is held in.
ACTIVE: t.Final = frozenset({State.DEFERRED, State.QUEUED, State.RUNNING})


def new_job_id() -> str:
    """128 random bits, URL-safe: unguessable, so an id can be shown to its client."""
    return secrets.token_urlsafe(16)


def utcnow() -> datetime:
    """Timezone-aware UTC now; every datetime in a record is one of these."""
    return datetime.now(UTC)


def from_timestamp(value: float | None) -> datetime | None:
    """A stored Unix time as an aware UTC datetime (stores keep floats: fast to index)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def format_error(error: BaseException) -> str:
    """``"module.Class: message"`` then the traceback: what a failed job keeps.

    Text, never a pickled exception: readable by any process, safe to load.
    """
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    trace = "".join(traceback.format_exception(error))
    return f"{name}: {error}\n{trace}"


def error_summary(error: str | None) -> tuple[str, str] | None:
    """``(type, message)`` from :func:`format_error` text, without the traceback."""
    if not error:
        return None
    head = error.split("\n", 1)[0]
    kind, _, message = head.partition(": ")
    return kind, message


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One job's state, as a store returns it. Never mutated; use :meth:`replace`.

    Times are Unix timestamps (``time.time()``), as stored; the :class:`Job` handle
    shows them as datetimes.
    """

    id: str  #: 128-bit random, URL-safe
    task: str  #: the registered task name
    payload: str  #: JSON text of ``{"args": [...], "kwargs": {...}}``, validated at enqueue
    state: State
    queue: str = "default"
    priority: int = 0  #: higher runs first
    attempts: int = 0  #: attempts started so far, including a lost one
    max_retries: int = 0  #: attempts after the first one, on failure
    retry_backoff: float = 1.0  #: base seconds of the exponential back-off
    timeout: float | None = None  #: seconds an attempt may run
    result_ttl: float = 86400.0  #: seconds the finished job is kept
    unique_key: str | None = None  #: at most one active job per key
    created_at: float = 0.0
    run_at: float = 0.0  #: not runnable before this
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None  #: who holds the lease
    lease_until: float | None = None
    progress: float | None = None  #: 0.0 to 1.0
    message: str | None = None  #: the last progress message
    result: str | None = None  #: JSON text
    error: str | None = None  #: "module.ExcClass: message\n<traceback>", never pickled
    is_cancel_requested: bool = False  #: a running job stops at its next ``progress()``
    #: JSON credentials the job needs (e.g. a replayed request's Cookie), kept out of
    #: ``payload`` and wiped by the store when the job finishes
    secrets: str | None = None

    def replace(self, **changes: t.Any) -> JobRecord:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def expires_at(self) -> float | None:
        """When a finished job is forgotten; None while it is not finished."""
        return None if self.finished_at is None else self.finished_at + self.result_ttl


class Job(t.Generic[R]):
    """A handle on one job. Reads go to the store; only the last snapshot is kept.

    .. versionadded:: 0.1
    """

    __slots__ = ("_record", "_store")

    def __init__(self, record: JobRecord, store: Store) -> None:
        self._record = record
        self._store = store

    def __repr__(self) -> str:
        return f"<Job {self._record.id} {self._record.task} {self._record.state}>"

    @property
    def id(self) -> str:
        """The job id: 128 random bits, URL-safe."""
        return self._record.id

    @property
    def record(self) -> JobRecord:
        """The last snapshot read from the store."""
        return self._record

    @property
    def state(self) -> State:
        """The state as of the last :meth:`refresh` (or creation)."""
        return self._record.state

    @property
    def progress(self) -> float | None:
        """The last reported progress, 0.0 to 1.0, as of the last :meth:`refresh`."""
        return self._record.progress

    @property
    def message(self) -> str | None:
        """The last progress message, as of the last :meth:`refresh`."""
        return self._record.message

    @property
    def error(self) -> str | None:
        """The error text of a failed job, with its traceback."""
        return self._record.error

    @property
    def created_at(self) -> datetime | None:
        """When the job was stored."""
        return from_timestamp(self._record.created_at)

    @property
    def finished_at(self) -> datetime | None:
        """When the job ended; None while it has not."""
        return from_timestamp(self._record.finished_at)

    def refresh(self) -> None:
        """Read the job again. :raises JobNotFound: if it expired meanwhile."""
        record = self._store.get(self._record.id)
        if record is None:
            raise JobNotFound(f"Job {self._record.id!r} no longer exists; it expired.")
        self._record = record

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return what the task returned.

        :param timeout: seconds to wait; None waits forever, 0 does not wait.
        :raises JobFailed: the job failed; the message has its error text.
        :raises JobCancelled: the job was cancelled.
        :raises JobTimeout: it did not finish within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            self.refresh()
            record = self._record
            if record.state == State.SUCCEEDED:
                return t.cast(R, serializers.loads(record.result or "null"))
            if record.state == State.FAILED:
                raise JobFailed(f"Job {record.id} ({record.task}) failed: {record.error}")
            if record.state == State.CANCELLED:
                raise JobCancelled(f"Job {record.id} ({record.task}) was cancelled.")
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(
                    f"Job {record.id} ({record.task}) is still {record.state} after "
                    f"{timeout} s. Wait longer, or check that a worker is running."
                )
            # Stores have no push channel; poll with a short, growing interval.
            pause = min(delay, 0.1)
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)
            delay *= 2

    def cancel(self) -> bool:
        """Cancel the job. A queued job never runs; a running one stops at its next
        :func:`progress` call. Returns False if it had already finished."""
        is_cancelled = self._store.cancel(self._record.id)
        record = self._store.get(self._record.id)
        if record is not None:
            self._record = record
        return is_cancelled


class RunningJob:
    """What a worker exposes to the job it runs, through :data:`current_job`."""

    __slots__ = ("record", "_report")

    def __init__(self, record: JobRecord, report: t.Callable[[float, str | None], None]) -> None:
        self.record = record
        self._report = report

    @property
    def id(self) -> str:
        """The id of the running job."""
        return self.record.id

    @property
    def attempt(self) -> int:
        """1 for the first attempt, 2 for the first retry, …"""
        return self.record.attempts

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress; see :func:`progress`."""
        self._report(fraction, message)


_current: contextvars.ContextVar[RunningJob] = contextvars.ContextVar("flask_afterward.job")

#: The job being run in this thread, or unbound (falsy) outside a job.
current_job: RunningJob = LocalProxy(  # type: ignore[assignment]
    _current, unbound_message="Not inside a running flask-afterward job."
)


def progress(fraction: float, message: str | None = None) -> None:
    """Report how far the running job is, from 0.0 to 1.0, with an optional message.

    Outside a job this does nothing, so a task can be called directly too.
    It is also the cancellation point: if the job was cancelled (or ran past its
    timeout) meanwhile, this raises :class:`~flask_afterward.errors.JobCancelled`
    (or :class:`~flask_afterward.errors.JobTimeout`).

    .. versionadded:: 0.1
    """
    running = _current.get(None)
    if running is not None:
        running.progress(min(1.0, max(0.0, float(fraction))), message)


def set_current(running: RunningJob) -> contextvars.Token[RunningJob]:
    """For the worker: make ``running`` the current job of this context."""
    return _current.set(running)


def reset_current(token: contextvars.Token[RunningJob]) -> None:
    """For the worker: undo :func:`set_current`."""
    _current.reset(token)
