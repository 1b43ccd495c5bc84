"""Tasks: functions that can also run later, as durable jobs.

``Task`` holds no reference to an app: it finds the app's state with
:func:`~flask_afterward.state.get_state` when called, so one task serves every app the
extension is registered on. Options are checked where they are written: a bad value,
or one the app's store or executor cannot honour (its capabilities), raises at
``.options()`` or ``.delay()`` before anything is stored.

Imports ``callbacks`` (same layer) for ``after_response``; never the reverse.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import logging
import time
import typing as t
from datetime import datetime
from datetime import timedelta

from flask import current_app
from flask import has_app_context
from flask import has_request_context

from . import serializers
from .callbacks import Call
from .callbacks import current_request_callbacks
from .config import EXTENSION_KEY
from .errors import ConfigurationError
from .errors import SerializationError
from .errors import Unsupported
from .jobs import Job
from .records import Capability
from .records import JobRecord
from .records import new_job_id
from .records import State
from .state import get_state

if t.TYPE_CHECKING:
    from .state import AppState

logger = logging.getLogger(__name__)

P = t.ParamSpec("P")
R = t.TypeVar("R")

Seconds = float | int | timedelta


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


def _seconds(name: str, value: Seconds | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigurationError(
            f"Task option {name}={value!r} is not valid: expected a number of seconds or "
            "a timedelta."
        )
    return None if value is None else float(value)


def required_capabilities(options: TaskOptions, *, is_deferred: bool) -> dict[Capability, str]:
    """What jobs with these options need of the store and executor, with the option
    that needs each (for the error message)."""
    needed: dict[Capability, str] = {}
    if options.priority:
        needed[Capability.PRIORITY] = f"priority={options.priority!r}"
    if options.delay or options.eta is not None:
        needed[Capability.DELAY] = "eta=" if options.eta is not None else "delay="
    if options.unique is not None:
        needed[Capability.UNIQUE] = "unique="
    if options.result_ttl is not None:
        needed[Capability.RESULT_TTL] = "result_ttl="
    if options.retries:
        needed[Capability.RETRY] = "retries="
    if options.timeout is not None:
        needed[Capability.TIMEOUT] = "timeout="
    if is_deferred:
        needed[Capability.DEFER] = ".after_response()"
    return needed


def check_capabilities(state: AppState, options: TaskOptions, *, is_deferred: bool) -> None:
    """Raise :class:`Unsupported` if the app cannot honour these options."""
    if len(state.capabilities) == len(Capability):  # sqlite and memory, run locally
        return
    needed = required_capabilities(options, is_deferred=is_deferred)
    missing = [what for capability, what in needed.items() if capability not in state.capabilities]
    if missing:
        raise Unsupported(
            f"{', '.join(missing)} cannot be honoured by AFTERWARD_STORE = "
            f"{state.settings.store!r} run by the {state.executor.name!r} executor. Drop "
            "the option, or use a store that has it (see the capability table in "
            "docs/engines.rst)."
        )


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

    def __init__(self, fn: cabc.Callable[P, R], *, name: str, defaults: TaskOptions) -> None:
        self.fn = fn
        #: the name jobs are stored under; renaming it orphans queued jobs
        self.name = name
        #: the options every job of this task gets; :meth:`options` returns a copy
        #: with others
        self.defaults = defaults
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
            "delay": _seconds("delay", delay),
            "eta": eta,
            "unique": unique,
            "retries": retries,
            "retry_backoff": _seconds("retry_backoff", retry_backoff),
            "timeout": _seconds("timeout", timeout),
            "result_ttl": _seconds("result_ttl", result_ttl),
        }
        defaults = dataclasses.replace(
            self.defaults, **{k: v for k, v in changes.items() if v is not None}
        )
        state = current_app_state()
        if state is not None:  # else .delay() checks, in the app it enqueues in
            check_capabilities(state, defaults, is_deferred=False)
        return Task(self.fn, name=self.name, defaults=defaults)

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
        state = get_state()
        settings = state.settings
        options = self.defaults
        is_deferred = is_deferred and not settings.eager  # eager runs it at once
        check_capabilities(state, options, is_deferred=is_deferred)
        payload = serializers.dumps_call(args, kwargs)
        _check_size(self.name, payload, settings.max_payload)
        now = time.time()
        record = JobRecord(
            id=job_id or new_job_id(),
            task=self.name,
            payload=payload,
            state=State.DEFERRED if is_deferred else State.QUEUED,
            queue=options.queue,
            priority=options.priority,
            max_retries=options.retries,
            retry_backoff=options.retry_backoff,
            timeout=options.timeout,
            result_ttl=settings.result_ttl if options.result_ttl is None else options.result_ttl,
            unique_key=options.unique,
            created_at=now,
            run_at=options.eta.timestamp() if options.eta is not None else now + options.delay,
            secrets=None if not secrets else serializers.dumps(secrets),
        )
        return Job(state.enqueue(record), state)


def _check_size(name: str, payload: str, limit: int) -> None:
    # len() counts characters; only encode when the text could be over the limit.
    if len(payload) * 4 > limit and len(payload.encode()) > limit:
        raise SerializationError(
            f"The arguments of {name} take {len(payload.encode())} bytes as JSON, over "
            f"AFTERWARD_MAX_PAYLOAD ({limit}). Store large data elsewhere (a file, a "
            "database row) and pass its id."
        )


def current_app_state() -> AppState | None:
    """The current app's state; None outside an app context or if not registered."""
    if not has_app_context():
        return None
    state: AppState | None = current_app.extensions.get(EXTENSION_KEY)
    return state


def _release_deferred(job_id: str) -> None:
    get_state().release([job_id])


def _cancel_deferred(job_id: str) -> None:
    get_state().store.cancel(job_id)
    logger.debug("Cancelled deferred job %s: its request failed.", job_id)
