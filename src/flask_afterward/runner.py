"""The one attempt runner: how every executor runs a job and records what happened.

Our worker threads, eager mode, and (tier 3) the Celery and RQ task wrappers all begin
an attempt in the store (a claim, or ``Store.start``), then hand the running record to
:meth:`Runner.run`, then record the :class:`Outcome` with :meth:`Runner.record`. So the
rules live here once:

- the task runs inside ``app.app_context()``, whose teardown functions run after it,
  as after a view (Flask-SQLAlchemy sessions are removed); eager mode runs it in the
  caller's context instead, as a direct call would (it sees the view's session);
- a failure is retried with exponential back-off while retries are left; a result
  JSON cannot hold never is, since running it again cannot change its type;
- ``JobCancelled`` is a cancellation only when a cancel was requested for this job
  (else it came from another job's ``result()``: a failure of this one);
- ``JobTimeout`` after the timeout was enforced records nothing more;
- ``progress()`` is recorded for the lease holder, and is where a cancel request or a
  passed deadline stops a cooperative job;
- signals are sent inside an app context, and a receiver that raises is logged and
  changes nothing (the job is recorded all the same).
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import functools
import inspect
import logging
import random
import time
import typing as t

from flask import current_app
from flask import has_app_context

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
from .records import State
from .signals import job_finished
from .signals import job_started
from .signals import send_guarded
from .state import get_state

if t.TYPE_CHECKING:
    from blinker import NamedSignal
    from flask import Flask

    from .stores.base import Store
    from .tasks import Task

logger = logging.getLogger(__name__)

#: What a job's ``job_finished`` signal says, by the state its attempt left it in.
OUTCOME_NAMES: t.Final = {
    State.SUCCEEDED: "succeeded",
    State.FAILED: "failed",
    State.QUEUED: "retrying",
    State.CANCELLED: "cancelled",
}


def backoff(attempt: int, *, base: float, cap: float = 3600.0, jitter: float = 0.25) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): exponential, capped.

    ``base * 2 ** (attempt - 1)``, at most ``cap``, minus up to ``jitter`` of it at
    random so jobs that failed together do not retry in lockstep (Dramatiq's
    ``compute_backoff``).
    """
    delay = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return delay * (1.0 - jitter * random.random())


class Outcome(t.NamedTuple):
    """How an attempt ended, before it is recorded.

    A named tuple: one is made for every job, and a frozen dataclass costs three
    times as much to make.
    """

    #: succeeded, failed, cancelled, or queued (a retry at ``retry_at``)
    state: State
    result: str | None = None  #: JSON text of what the task returned
    error: str | None = None  #: :func:`~flask_afterward.records.format_error` text
    retry_at: float | None = None
    #: what the task raised, for eager mode to raise at the call site
    exception: BaseException | None = None

    @property
    def name(self) -> str:
        """``"succeeded"``, ``"failed"``, ``"retrying"`` or ``"cancelled"``."""
        return OUTCOME_NAMES[self.state]


class Attempt:
    """One running attempt, as the runner and a timeout enforcer share it.

    :param lease: seconds the store's claim holds; the lease is due for an extension
        after a third of it.
    :param is_watched: a monitor enforces the timeout (a worker group's does, and
        abandons the thread); else the job is stopped at its next ``progress()``
        once it is overdue (eager mode).
    """

    __slots__ = ("record", "started", "deadline", "next_extension", "is_timed_out", "is_watched")

    def __init__(self, record: JobRecord, lease: float, *, is_watched: bool = False) -> None:
        now = time.monotonic()
        self.record = record
        self.is_watched = is_watched
        self.started = now
        #: when the attempt is over its timeout (monotonic); None without one
        self.deadline = None if record.timeout is None else now + record.timeout
        self.next_extension = now + lease / 3
        #: set once the timeout was enforced (recorded as failed); nothing more is
        self.is_timed_out = False

    def is_overdue(self, now: float) -> bool:
        """Whether the attempt ran past its timeout by ``now`` (monotonic)."""
        return self.deadline is not None and now >= self.deadline


class Runner:
    """Runs attempts of ``tasks`` for ``app`` and records them in ``store`` as ``worker``.

    :param worker: the lease holder's id; the store accepts the attempt's records only
        from it.
    :param lease: seconds a claim holds (for :class:`Attempt`).
    :param is_in_caller_context: run in the app context of the caller when it is this
        app's (eager mode), instead of a fresh one.
    """

    def __init__(
        self,
        app: Flask,
        store: Store,
        tasks: cabc.Mapping[str, Task[..., t.Any]],
        *,
        worker: str,
        lease: float,
        is_in_caller_context: bool = False,
    ) -> None:
        self.app = app
        self.is_in_caller_context = is_in_caller_context
        self.store = store
        self.tasks = tasks
        self.worker = worker
        self.lease = lease

    def job(self, record: JobRecord) -> Job[t.Any]:
        """A handle on ``record`` for signal receivers."""
        return Job(record, get_state(self.app))

    def run(self, attempt: Attempt) -> Outcome | None:
        """Run the attempt's job; return how it ended, or None if it must not be recorded
        (its timeout was enforced meanwhile). Exceptions never escape, but
        ``KeyboardInterrupt`` and ``SystemExit``."""
        record = attempt.record
        task = self.tasks.get(record.task)
        if task is None:
            return self.give_up(record, f"no task named {record.task!r} is registered")
        try:
            args, kwargs = serializers.loads_call(record.payload)
        except Exception as error:  # e.g. decimal.InvalidOperation, not a ValueError
            return self.give_up(record, f"its stored arguments cannot be read ({error!r})")
        token = set_current(RunningJob(record, functools.partial(self._report, attempt)))
        try:
            with self._context():
                if job_started.receivers:  # else skip making a handle for nobody
                    self.send(job_started, job=self.job(record))
                value = call_task(task, args, kwargs)
            result = serializers.dumps(value, what=f"the result of {task.name}")
        except JobCancelled as error:
            if self._is_cancel_requested(record.id):
                return Outcome(State.CANCELLED, exception=error)
            return self.failure(record, error)  # from another job's result()
        except JobTimeout as error:
            return None if attempt.is_timed_out else self.failure(record, error)
        except SerializationError as error:
            return self.failure(record, error, may_retry=False)
        except Exception as error:
            return self.failure(record, error)
        finally:
            reset_current(token)
        return Outcome(State.SUCCEEDED, result=result)

    def _context(self) -> t.ContextManager[object]:
        if self.is_in_caller_context and has_app_context() and current_app == self.app:
            return contextlib.nullcontext()
        return self.app.app_context()

    def _is_cancel_requested(self, job_id: str) -> bool:
        record = self.store.get(job_id)
        return record is not None and record.is_cancel_requested

    def _report(self, attempt: Attempt, fraction: float, message: str | None) -> None:
        if attempt.is_timed_out or (
            not attempt.is_watched and attempt.is_overdue(time.monotonic())
        ):
            raise JobTimeout(f"Job {attempt.record.id} ran over its timeout.")
        if self.store.set_progress(attempt.record.id, self.worker, fraction, message):
            raise JobCancelled(f"Job {attempt.record.id} was cancelled.")

    def failure(
        self, record: JobRecord, error: BaseException | str, *, may_retry: bool = True
    ) -> Outcome:
        """A failed attempt: a retry with back-off while any is left, else failed."""
        text = error if isinstance(error, str) else format_error(error)
        exception = None if isinstance(error, str) else error
        if may_retry and record.attempts <= record.max_retries:
            retry_at = time.time() + backoff(record.attempts, base=record.retry_backoff)
            return Outcome(State.QUEUED, error=text, retry_at=retry_at, exception=exception)
        return Outcome(State.FAILED, error=text, exception=exception)

    def give_up(self, record: JobRecord, why: str) -> Outcome:
        """A job that cannot run here at all: failed, never retried."""
        logger.error("Job %s (%s) cannot run: %s.", record.id, record.task, why)
        error = (
            f"flask_afterward.errors.JobFailed: job {record.id} cannot run: {why}. Deploy "
            "code that defines the task, then run 'flask afterward retry ID'."
        )
        return self.failure(record, error, may_retry=False)

    def record(self, record: JobRecord, outcome: Outcome) -> bool:
        """Write ``outcome`` to the store, log it and signal it; False if the job was no
        longer ours (its lease expired, or its timeout failed it), and then nothing
        is signalled."""
        store, worker = self.store, self.worker
        if outcome.state == State.SUCCEEDED:
            is_ours = store.complete(record.id, worker, outcome.result)
        elif outcome.state == State.CANCELLED:
            is_ours = store.mark_cancelled(record.id, worker)
        else:
            assert outcome.error is not None
            is_ours = store.fail(record.id, worker, outcome.error, outcome.retry_at)
        self.finished(record, outcome, is_ours)
        return is_ours

    def finished(self, record: JobRecord, outcome: Outcome, is_ours: bool) -> None:
        """Log and signal an outcome the store recorded (or, if not ``is_ours``, refused)."""
        if not is_ours:
            # Our lease expired (or the timeout failed it) and the job moved on.
            logger.warning(
                "Job %s finished (%s) after its worker lost it; the outcome is discarded.",
                record.id,
                outcome.name,
            )
            return
        if outcome.state == State.QUEUED:
            assert outcome.retry_at is not None and outcome.error is not None
            logger.info(
                "Job %s (%s) failed on attempt %d, retrying in %.1f s: %s",
                record.id,
                record.task,
                record.attempts,
                max(0.0, outcome.retry_at - time.time()),
                outcome.error.split("\n", 1)[0],
            )
        elif outcome.state == State.FAILED:
            assert outcome.error is not None
            summary, _, trace = outcome.error.partition("\n")
            logger.warning(
                "Job %s (%s) failed on its last attempt (%d): %s\n%s",
                record.id,
                record.task,
                record.attempts,
                summary,
                trace,
            )
        else:
            logger.debug("Job %s (%s) %s.", record.id, record.task, outcome.name)
        if job_finished.receivers:
            with self._context():
                self.send(job_finished, job=self.job(record), outcome=outcome.name)

    def send(self, signal: NamedSignal, **kwargs: t.Any) -> None:
        """Send ``signal`` from the app, guarded (see :func:`~.signals.send_guarded`)."""
        send_guarded(signal, self.app, **kwargs)


def call_task(task: Task[..., t.Any], args: list[t.Any], kwargs: dict[str, t.Any]) -> t.Any:
    """Run the task's function; an ``async def`` one runs to completion here."""
    result = task.fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result
