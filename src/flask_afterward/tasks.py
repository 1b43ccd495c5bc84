"""Tasks: functions that can also run later, as durable jobs.

``Task`` holds a reference to its ``Afterward`` object's registry, never to an app: it
finds the app's store through ``current_app.extensions["afterward"]`` when called, so
one task serves every app the extension is registered on.

Imports ``callbacks`` (same layer) for ``after_response``; never the reverse.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import dataclasses
import inspect
import logging
import time
import typing as t
from datetime import datetime
from datetime import timedelta

from flask import current_app
from flask import has_request_context

from . import serializers
from .callbacks import Call
from .callbacks import current_request_callbacks
from .config import EXTENSION_KEY
from .config import Settings
from .errors import ConfigurationError
from .errors import NotInitialized
from .errors import SerializationError
from .jobs import Job
from .jobs import reset_current
from .jobs import RunningJob
from .jobs import set_current
from .records import format_error
from .records import JobRecord
from .records import new_job_id
from .records import State
from .signals import job_enqueued
from .signals import job_finished
from .signals import job_started

if t.TYPE_CHECKING:
    from .stores.base import Store

logger = logging.getLogger(__name__)

P = t.ParamSpec("P")
R = t.TypeVar("R")

Seconds = float | int | timedelta


class Backend(t.Protocol):
    """What a task needs from the app's flask-afterward state (``extension._AppState``)."""

    settings: Settings

    @property
    def store(self) -> Store: ...

    def wake_workers(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """How a task's jobs are enqueued and run. ``Task.options`` returns changed copies."""

    queue: str = "default"
    priority: int = 0  #: higher runs first
    delay: float = 0.0  #: seconds before the job may run
    eta: datetime | None = None  #: the job may not run before this (wins over delay)
    unique: str | None = None  #: at most one active job with this key
    retries: int = 0  #: attempts after the first, on failure
    retry_backoff: float = 1.0  #: base seconds of the exponential back-off
    timeout: float | None = None  #: seconds an attempt may run
    result_ttl: float | None = None  #: None: AFTERWARD_RESULT_TTL

    def __post_init__(self) -> None:
        _check(
            bool(self.queue) and isinstance(self.queue, str),
            "queue",
            self.queue,
            "a non-empty string",
        )
        _check(_is_int(self.priority), "priority", self.priority, "an integer")
        _check(
            _is_int(self.retries) and self.retries >= 0, "retries", self.retries, "an integer >= 0"
        )
        _check(_is_seconds(self.delay, minimum=0), "delay", self.delay, "seconds >= 0")
        _check(
            _is_seconds(self.retry_backoff, minimum=0),
            "retry_backoff",
            self.retry_backoff,
            "seconds >= 0",
        )
        for name in ("timeout", "result_ttl"):
            value = getattr(self, name)
            _check(value is None or _is_seconds(value), name, value, "None or seconds > 0")
        _check(
            self.eta is None or (isinstance(self.eta, datetime) and self.eta.tzinfo is not None),
            "eta",
            self.eta,
            "a timezone-aware datetime (naive times are ambiguous)",
        )
        _check(
            self.unique is None or isinstance(self.unique, str), "unique", self.unique, "a string"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object, *, minimum: float | None = None) -> bool:
    """A number of seconds, not NaN, ``>= minimum`` (or ``> 0`` without one).

    Checks the type first, so a string from a config file is refused with a
    :class:`ConfigurationError` rather than a ``TypeError`` from the comparison.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return False
    return value > 0 if minimum is None else value >= minimum


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigurationError(f"Task option {name}={value!r} is not valid: expected {expected}.")


def _seconds(value: Seconds | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigurationError(f"{value!r} is not a number of seconds or a timedelta.")
    return None if value is None else float(value)


class Task(t.Generic[P, R]):
    """A function that can also run later, as a job. Calling it runs it now.

    .. code-block:: python

        @afterward.task(retries=3)
        def send_mail(to: str, subject: str) -> None: ...

        send_mail("a@b.c", "hi")                 # runs now
        job = send_mail.delay("a@b.c", "hi")     # a durable job
        send_mail.after_response("a@b.c", "hi")  # runnable once the response is out

    .. versionadded:: 0.1
    """

    def __init__(self, fn: cabc.Callable[P, R], *, name: str, config: TaskOptions) -> None:
        self.fn = fn
        #: the name jobs are stored under; renaming it orphans queued jobs
        self.name = name
        #: the defaults every job of this task gets
        self.config = config
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Store a job that runs ``fn(*args, **kwargs)`` as soon as a worker is free.

        The arguments are checked here: a value JSON cannot hold raises
        :class:`~flask_afterward.errors.SerializationError` naming it, and nothing is
        stored. With ``AFTERWARD_EAGER`` the job runs right here instead.
        """
        return self.enqueue(args, kwargs, is_deferred=False)

    def after_response(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Like :meth:`delay`, but runnable only once the response has been delivered.

        The job is stored (``deferred``) before the response is sent, so it survives a
        crash: if the process dies before releasing it, the store releases it after
        ``AFTERWARD_DEFER_GRACE`` seconds. If the request ends in an unhandled
        exception, the job is cancelled. Outside a request this is :meth:`delay`.
        """
        if not has_request_context():
            return self.enqueue(args, kwargs, is_deferred=False)
        job_id = new_job_id()
        job = self.enqueue(args, kwargs, is_deferred=True, job_id=job_id)
        # Not our job when ``unique`` handed back an active one: the request that
        # stored it releases it, and a failure of this request must not cancel it.
        if job.id == job_id and job.state == State.DEFERRED:
            callbacks = current_request_callbacks()
            callbacks.calls.append(Call(_release_deferred, (job.id,), {}))
            callbacks.on_dropped.append(Call(_cancel_deferred, (job.id,), {}))
        return job

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: Seconds | None = None,
        eta: datetime | None = None,
        unique: str | None = None,
        retries: int | None = None,
        retry_backoff: Seconds | None = None,
        timeout: Seconds | None = None,
        result_ttl: Seconds | None = None,
    ) -> Task[P, R]:
        """Return a copy of this task whose jobs use these options instead.

        .. code-block:: python

            send_mail.options(delay=30, unique=f"mail:{to}").delay(to, "hi")
        """
        changes: dict[str, t.Any] = {
            "queue": queue,
            "priority": priority,
            "delay": _seconds(delay),
            "eta": eta,
            "unique": unique,
            "retries": retries,
            "retry_backoff": _seconds(retry_backoff),
            "timeout": _seconds(timeout),
            "result_ttl": _seconds(result_ttl),
        }
        config = dataclasses.replace(
            self.config, **{k: v for k, v in changes.items() if v is not None}
        )
        return Task(self.fn, name=self.name, config=config)

    def enqueue(
        self,
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
        *,
        is_deferred: bool = False,
        secrets: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> Job[R]:
        """Store a job with these arguments: what :meth:`delay` does, for internal use.

        With ``unique``, the active job holding the key may come back instead of a new
        one; then nothing is stored, no signal is sent and no worker is woken.

        :param is_deferred: store it ``deferred``; the caller releases it.
        :param job_id: the id to store it under; default a new random one.
        :param secrets: credentials the job needs (an accepted view's ``Cookie``),
            kept apart from the arguments and wiped by the store when the job finishes.
        """
        backend = _backend()
        settings = backend.settings
        payload = serializers.dumps_call(args, kwargs)
        _check_size(self.name, payload, settings.max_payload)
        config = self.config
        now = time.time()
        record = JobRecord(
            id=job_id or new_job_id(),
            task=self.name,
            payload=payload,
            state=State.DEFERRED if is_deferred else State.QUEUED,
            queue=config.queue,
            priority=config.priority,
            max_retries=config.retries,
            retry_backoff=config.retry_backoff,
            timeout=config.timeout,
            result_ttl=settings.result_ttl if config.result_ttl is None else config.result_ttl,
            unique_key=config.unique,
            created_at=now,
            run_at=config.eta.timestamp() if config.eta is not None else now + config.delay,
            secrets=None if not secrets else serializers.dumps(secrets),
        )
        store = backend.store
        if settings.eager:
            return Job(store.enqueue(run_eagerly(self, record, store)), store)
        job: Job[R] = Job(store.enqueue(record), store)
        if job.id != record.id:
            return job
        if job_enqueued.receivers:  # else skip finding the app object for nobody
            job_enqueued.send(current_app._get_current_object(), job=job)  # type: ignore[attr-defined]
        if not is_deferred:
            backend.wake_workers()
        return job


def _check_size(name: str, payload: str, limit: int) -> None:
    # len() counts characters; only encode when the text could be over the limit.
    if len(payload) * 4 > limit and len(payload.encode()) > limit:
        raise SerializationError(
            f"The arguments of {name} take {len(payload.encode())} bytes as JSON, over "
            f"AFTERWARD_MAX_PAYLOAD ({limit}). Store large data elsewhere (a file, a "
            "database row) and pass its id."
        )


def _backend() -> Backend:
    try:
        return t.cast(Backend, current_app.extensions[EXTENSION_KEY])
    except KeyError:
        raise NotInitialized() from None
    except RuntimeError:
        raise NotInitialized(
            "Enqueuing a job needs an app context: call it in a request, in a CLI "
            "command, or inside 'with app.app_context():'."
        ) from None


def _release_deferred(job_id: str) -> None:
    backend = _backend()
    backend.store.release_deferred([job_id])
    backend.wake_workers()


def _cancel_deferred(job_id: str) -> None:
    _backend().store.cancel(job_id)
    logger.debug("Cancelled deferred job %s: its request failed.", job_id)


def call_task(task: Task[..., t.Any], args: list[t.Any], kwargs: dict[str, t.Any]) -> t.Any:
    """Run the task's function; an ``async def`` one runs to completion here."""
    result = task.fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def run_eagerly(task: Task[..., t.Any], record: JobRecord, store: Store) -> JobRecord:
    """``AFTERWARD_EAGER``: run the job here, with its retries, and return its final record.

    The arguments go through the same JSON round trip as a real job. An exception
    propagates after the last attempt, so a test sees it at the ``.delay()`` call; the
    job is stored failed first. As with a worker, a result JSON cannot hold fails the
    job at once: running it again would not change the result's type.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    args, kwargs = serializers.loads_call(record.payload)
    attempt = record
    while True:
        attempt = attempt.replace(
            state=State.RUNNING, attempts=attempt.attempts + 1, started_at=time.time()
        )
        job: Job[t.Any] = Job(attempt, store)
        job_started.send(app, job=job)
        token = set_current(RunningJob(attempt, _eager_progress))
        try:
            value = call_task(task, args, kwargs)
            result = serializers.dumps(value, what=f"the result of {task.name}")
        except Exception as error:
            # JobCancelled too: nothing can cancel an eager job, which is stored only
            # once it ran, so it comes from another job's result(), a failure here.
            is_retried = not isinstance(error, SerializationError)
            if is_retried and attempt.attempts <= attempt.max_retries:
                job_finished.send(app, job=job, outcome="retrying")
                continue
            job_finished.send(app, job=job, outcome="failed")
            error.add_note(f"(flask-afterward: eager job {record.id} of {task.name} failed)")
            failed = attempt.replace(
                state=State.FAILED, error=format_error(error), finished_at=time.time(), secrets=None
            )
            store.enqueue(failed)
            raise
        finally:
            reset_current(token)
        job_finished.send(app, job=job, outcome="succeeded")
        return attempt.replace(
            state=State.SUCCEEDED,
            result=result,
            progress=1.0,
            finished_at=time.time(),
            secrets=None,  # wiped when it finishes, as the stores do
        )


def _eager_progress(fraction: float, message: str | None) -> None:
    logger.debug("Eager job progress %.0f%% %s", fraction * 100, message or "")
