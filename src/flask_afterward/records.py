"""Job data: states, the immutable :class:`JobRecord`, and the helpers that make one.

A leaf module: stores, the worker, the HTTP API and the ``Job`` handle all read these,
and it imports nothing of ours, so nothing imports in a circle (``jobs`` and
``stores.base`` used to import each other).
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
import traceback
import typing as t
from datetime import datetime
from datetime import UTC


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


def claim_order(record: JobRecord) -> tuple[int, float]:
    """The sort key of runnable jobs, best first: highest priority, then oldest ``run_at``.

    ``stores/sqlite.sql`` says the same with its ``jobs_runnable`` index and
    ``ORDER BY priority DESC, run_at``; the contract suite keeps the two equal.
    """
    return (-record.priority, record.run_at)


class Capability(enum.StrEnum):
    """Something a store or an executor can honour; see ``docs/engines.rst``.

    Stores and executors list theirs in a ``capabilities`` class attribute (as
    Django's task backends say ``supports_defer``). A job gets only what both its
    store and its executor have; a task option that needs a missing one is refused
    at ``.options()`` or ``.delay()`` with :class:`~flask_afterward.errors.Unsupported`,
    naming the option and the store, never dropped silently.
    """

    PRIORITY = "priority"  #: numeric ``priority=``, higher runs first
    DELAY = "delay"  #: ``delay=`` / ``eta=`` of any length
    UNIQUE = "unique"  #: ``unique=``: one active job per key, decided atomically
    RESULT_TTL = "result_ttl"  #: a per-job ``result_ttl=``
    RETRY = "retry"  #: ``retries=`` with back-off
    TIMEOUT = "timeout"  #: ``timeout=`` per attempt
    DEFER = "defer"  #: ``.after_response()``: held until the response is delivered
    PROGRESS = "progress"  #: ``progress()`` recorded and readable
    CANCEL_RUNNING = "cancel_running"  #: a running job can be stopped
    LIST = "list"  #: jobs can be listed and counted (CLI, dashboard)


#: Every capability: what the sqlite and memory stores have.
ALL_CAPABILITIES: t.Final = frozenset(Capability)
