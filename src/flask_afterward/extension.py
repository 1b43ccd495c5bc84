"""The ``Afterward`` extension object: registration, per-app state, decorators."""

from __future__ import annotations

import collections.abc as cabc
import logging
import signal
import sys
import threading
import typing as t

from flask.signals import got_request_exception
from flask.signals import request_started

from .callbacks import AfterResponseMiddleware
from .callbacks import CallbackRunner
from .callbacks import record_unhandled_error
from .callbacks import remember_contexts
from .callbacks import ResponseInfo
from .cli import afterward_cli
from .config import EXTENSION_KEY
from .config import Settings
from .errors import ConfigurationError
from .errors import JobNotFound
from .executors import EagerExecutor
from .executors import Executor
from .executors import LocalExecutor
from .jobs import Job
from .pool import CallbackPool
from .replay import run_accepted_view
from .state import AppState
from .state import get_state
from .stores import open_store
from .stores.base import QueueStore
from .tasks import Task
from .tasks import TaskOptions
from .views import accept_view
from .views import accepted_response
from .views import ACCEPTED_TASK
from .views import make_blueprint

if t.TYPE_CHECKING:
    from flask import Flask

    from .stores.base import Store

P = t.ParamSpec("P")
R = t.TypeVar("R")
ViewFunction = t.TypeVar("ViewFunction", bound=cabc.Callable[..., t.Any])

logger = logging.getLogger("flask_afterward")

ResponseHook = t.TypeVar("ResponseHook", bound=cabc.Callable[[ResponseInfo], object])


def _build_state(app: Flask, afterward: Afterward, settings: Settings) -> AppState:
    """Open the store, choose the executor, make the callback pool: nothing starts yet."""
    # Opened to validate the URL now (a bad path fails init_app, not the first job);
    # its connections are released again, so that a server forking after init_app
    # (gunicorn --preload) hands none to its children. The store reconnects on use.
    store = open_store(settings, instance_path=app.instance_path)
    store.close()
    pool = None
    if not _is_uwsgi_without_threads():
        pool = CallbackPool(
            threads=settings.callback_threads,
            max_pending=settings.max_pending_callbacks,
            shutdown_timeout=settings.shutdown_timeout,
            close_at_exit=False,
        )
    return AppState(
        app=app,
        afterward=afterward,
        settings=settings,
        store=store,
        executor=_executor(app, afterward, settings, store),
        callbacks=CallbackRunner(app, afterward._response_hooks, pool),
    )


def _executor(app: Flask, afterward: Afterward, settings: Settings, store: Store) -> Executor:
    if settings.eager:
        return EagerExecutor(app, store, afterward.tasks, settings)
    if not isinstance(store, QueueStore):
        raise ConfigurationError(
            f"AFTERWARD_STORE = {settings.store!r} cannot be run by our own workers, and "
            "no other executor is configured for it."
        )
    return LocalExecutor(app, store, afterward.tasks, settings)


class Afterward:
    """Run work after the response: callbacks now, durable jobs later.

    .. code-block:: python

        afterward = Afterward()

        def create_app():
            app = Flask(__name__)
            afterward.init_app(app)
            return app

    One ``Afterward`` object may serve several apps; each app gets its own settings,
    pool and threads in ``app.extensions["afterward"]``.

    :param app: call :meth:`init_app` on this app right away.

    .. versionadded:: 0.1
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._response_hooks: list[cabc.Callable[[ResponseInfo], object]] = []
        #: the registered tasks by name; workers look jobs' tasks up here
        self.tasks: dict[str, Task[..., t.Any]] = {}
        self._accepted_task = self.task(name=ACCEPTED_TASK)(run_accepted_view)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: read its ``AFTERWARD_*`` config and install the hooks.

        Nothing starts here: threads start on first use, in the process that uses
        them, so forking servers (gunicorn ``--preload``) are safe.

        :raises ConfigurationError: on a bad setting, or when ``app`` already has one.
        """
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError(
                "A 'flask_afterward.Afterward' instance has already been registered on "
                "this Flask app. Import and use that instance instead."
            )
        settings = Settings.from_app(app)
        state = _build_state(app, self, settings)
        app.extensions[EXTENSION_KEY] = state
        got_request_exception.connect(record_unhandled_error, app)
        app.wsgi_app = AfterResponseMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, state.callbacks, on_request=state.executor.start
        )
        app.register_blueprint(make_blueprint(), url_prefix=settings.url_prefix)
        if settings.dashboard:
            from .dashboard import init_dashboard

            init_dashboard(app, settings)
        app.cli.add_command(afterward_cli)
        _exit_cleanly_on_sigterm()

    @t.overload
    def task(self, fn: cabc.Callable[P, R], /) -> Task[P, R]: ...

    @t.overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retries: int = 0,
        retry_backoff: float = 1.0,
        timeout: float | None = None,
        result_ttl: float | None = None,
    ) -> cabc.Callable[[cabc.Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: cabc.Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retries: int = 0,
        retry_backoff: float = 1.0,
        timeout: float | None = None,
        result_ttl: float | None = None,
    ) -> Task[P, R] | cabc.Callable[[cabc.Callable[P, R]], Task[P, R]]:
        """Make a function a task: calling it runs it now; ``.delay()`` makes a job.

        Use it bare (``@afterward.task``) or with options
        (``@afterward.task(retries=3, timeout=60, queue="mail")``).

        :param name: the name jobs are stored under; default ``module.qualname``.
            Queued jobs find their task by this name, so keep it stable.
        :param retries: attempts after the first, with exponential back-off from
            ``retry_backoff`` seconds.
        :param timeout: seconds an attempt may run before it counts as failed.
        :param result_ttl: seconds a finished job is kept (default
            ``AFTERWARD_RESULT_TTL``).
        :raises ConfigurationError: for a bad option or a name already taken.

        .. versionadded:: 0.1
        """
        defaults = TaskOptions(
            queue=queue,
            priority=priority,
            retries=retries,
            retry_backoff=retry_backoff,
            timeout=timeout,
            result_ttl=result_ttl,
        )

        def decorate(fn: cabc.Callable[P, R]) -> Task[P, R]:
            task_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if task_name in self.tasks:
                raise ConfigurationError(
                    f"A task named {task_name!r} is already registered. Give one of them "
                    "another name with @afterward.task(name=...)."
                )
            task = Task(fn, name=task_name, defaults=defaults)
            self.tasks[task_name] = task
            return task

        return decorate if fn is None else decorate(fn)

    @t.overload
    def accepted(self, view: ViewFunction, /) -> ViewFunction: ...

    @t.overload
    def accepted(
        self,
        view: None = None,
        /,
        *,
        queue: str = "default",
        retries: int = 0,
        timeout: float | None = None,
        result_ttl: float | None = None,
    ) -> cabc.Callable[[ViewFunction], ViewFunction]: ...

    def accepted(
        self,
        view: ViewFunction | None = None,
        /,
        *,
        queue: str = "default",
        retries: int = 0,
        timeout: float | None = None,
        result_ttl: float | None = None,
    ) -> ViewFunction | cabc.Callable[[ViewFunction], ViewFunction]:
        """Run a slow view as a job; answer ``202 Accepted`` with a ``Location`` at once.

        The request (method, path, query, headers, body up to
        ``AFTERWARD_MAX_PAYLOAD``, remote address) is stored with the job. A worker
        replays it through the app, so hooks, the session, error handlers and
        ``current_user`` behave as in the original request, and the view's response
        (status, headers, body) is served at the job's result URL. ``Cookie`` and
        ``Authorization`` are stored apart and wiped when the job finishes, and the
        session cookie the replay would send back is left out of the result.

        .. code-block:: python

            @app.post("/reports")
            @afterward.accepted
            def build_report():
                progress(0.5, "half way")
                return {"ok": True}

        .. versionadded:: 0.1
        """
        task = self._accepted_task.options(
            queue=queue, retries=retries, timeout=timeout, result_ttl=result_ttl
        )

        def decorate(view: ViewFunction) -> ViewFunction:
            return accept_view(view, task)

        return decorate if view is None else decorate(view)

    def accepted_response(self, job: Job[t.Any]) -> t.Any:
        """``202 Accepted`` pointing at ``job``'s status, for a view that enqueued it.

        .. versionadded:: 0.1
        """
        return accepted_response(job)

    def job(self, job_id: str, *, app: Flask | None = None) -> Job[t.Any]:
        """Look a job up by id.

        :raises JobNotFound: if no job has this id, or it expired.

        .. versionadded:: 0.1
        """
        state = self._state(app)
        record = state.get(job_id)
        if record is None:
            raise JobNotFound(f"No job has the id {job_id!r}; it never existed or expired.")
        return Job(record, state)

    def after_response(self, hook: ResponseHook) -> ResponseHook:
        """Decorate a function to run after every response, with a :class:`ResponseInfo`.

        Hooks run like :func:`after_this_response` callbacks (pool, context, isolated
        failures), after the request's own callbacks, and also after responses that
        ended in an unhandled exception, so they suit logging and auditing.

        .. versionadded:: 0.1
        """
        self._response_hooks.append(hook)
        # The hooks run in their request's context, which needs keeping from the
        # start of each request; without hooks, requests do not pay for that.
        request_started.connect(remember_contexts)
        return hook

    def wait_for_callbacks(self, timeout: float = 10.0, *, app: Flask | None = None) -> bool:
        """Block until every delivered callback of ``app`` has run. For tests.

        Returns False if ``timeout`` ran out first. Only callbacks of responses the
        server (or test client) has closed are counted; see ``docs/testing.rst``.
        """
        pool = self._state(app).callbacks.pool
        return pool.wait_idle(timeout) if pool is not None else True

    def close(self, app: Flask | None = None, *, timeout: float | None = None) -> int:
        """Stop ``app``'s threads after pending work finished or ``timeout`` ran out.

        This also happens on its own at interpreter exit. Returns how many units of
        work did not finish. After ``close``, callbacks run inline.
        """
        return self._state(app).close(timeout)

    def _state(self, app: Flask | None) -> AppState:
        state = get_state(app)
        if state.afterward is not self:
            raise ConfigurationError("This app was registered with another Afterward object.")
        return state


def _is_uwsgi_without_threads() -> bool:
    """uWSGI runs no Python threads unless told to; callbacks must then run inline."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    options = getattr(uwsgi, "opt", {})
    if options.get("enable-threads") or options.get("threads"):
        return False
    logger.warning(
        "uWSGI runs without --enable-threads: after-response callbacks run inline, "
        "in the worker, after each response. Start uWSGI with --enable-threads."
    )
    return True


_sigterm_lock = threading.Lock()


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` when nobody else handles it.

    Python's default for SIGTERM ends the process without running ``atexit``, so
    pending callbacks would be lost on waitress or the Flask dev server. Servers with
    their own handler (gunicorn workers) are left alone, and so is any app that set one.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with _sigterm_lock:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
