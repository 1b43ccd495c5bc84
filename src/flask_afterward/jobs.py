"""Jobs: the handle users hold, and what a running job sees of itself.

The split follows procrastinate and arq: a :class:`~flask_afterward.records.JobRecord`
is one immutable row as a store returns it (``records``, a leaf module); a :class:`Job`
is a thin handle that reads the store again when asked. Inside a running job,
:func:`progress` and :data:`current_job` reach the job being run through a context
variable the worker sets.
"""

from __future__ import annotations

import contextvars
import time
import typing as t
from datetime import datetime

from werkzeug.local import LocalProxy

from . import serializers
from .errors import JobCancelled
from .errors import JobFailed
from .errors import JobNotFound
from .errors import JobTimeout
from .records import from_timestamp
from .records import JobRecord
from .records import State

if t.TYPE_CHECKING:
    from .state import AppState

R = t.TypeVar("R")


class Job(t.Generic[R]):
    """A handle on one job. Reads go to the store of record; only the last snapshot is kept.

    It reads and cancels through its app's engine (the store of record and the
    executor that runs the job), so it works the same whoever runs the job.

    .. versionadded:: 0.1
    """

    __slots__ = ("_record", "_engine")

    def __init__(self, record: JobRecord, engine: AppState) -> None:
        self._record = record
        self._engine = engine

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
        record = self._engine.get(self._record.id)
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
        is_cancelled = self._engine.cancel(self._record.id)
        record = self._engine.get(self._record.id)
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
