"""The ``Afterward`` extension object: registration, per-app state, decorators."""

from __future__ import annotations

import atexit
import collections.abc as cabc
import functools
import logging
import os
import signal
import sys
import threading
import time
import typing as t
import weakref

import click
from flask import abort
from flask import current_app
from flask import request
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
from .errors import NotInitialized
from .errors import SerializationError
from .jobs import Job
from .pool import CallbackPool
from .replay import capture_request
from .replay import REPLAY_KEY
from .replay import run_accepted_view
from .stores import open_store
from .stores.base import QueueStore
from .tasks import Task
from .tasks import TaskOptions
from .views import accepted_response
from .views import ACCEPTED_TASK
from .views import check_job_urls
from .views import make_blueprint
from .worker import WorkerGroup

if t.TYPE_CHECKING:
    from flask import Flask

    from .stores.base import Store

P = t.ParamSpec("P")
R = t.TypeVar("R")
ViewFunction = t.TypeVar("ViewFunction", bound=cabc.Callable[..., t.Any])

logger = logging.getLogger("flask_afterward")

ResponseHook = t.TypeVar("ResponseHook", bound=cabc.Callable[[ResponseInfo], object])


class _AppState:
    """Everything flask-afterward keeps for one app, in ``app.extensions["afterward"]``."""

    def __init__(self, app: Flask, afterward: Afterward, settings: Settings) -> None:
        self.app = app
        self.afterward = afterward
        self.settings = settings
        #: where jobs live; opened (and validated) now, connections made per thread
        self.store: Store = open_store(settings, instance_path=app.instance_path)
        # Drop the connection opened to validate the store, so that a server forking
        # after init_app (gunicorn --preload) hands no SQLite connection to children.
        self.store.close()
        self._workers: WorkerGroup | None = None
        self._workers_pid = 0
        #: False for the CLI worker's group: its command stops it, not our exit hook
        self._is_workers_owned = True
        self._workers_lock = threading.Lock()
        pool = None
        if not _is_uwsgi_without_threads():
            pool = CallbackPool(
                threads=settings.callback_threads,
                max_pending=settings.max_pending_callbacks,
                shutdown_timeout=settings.shutdown_timeout,
                close_at_exit=False,
            )
        self.callbacks = CallbackRunner(app, afterward._response_hooks, pool)
        # One exit hook for callbacks and jobs, so they share one shutdown deadline.
        # It holds the state weakly: apps that are gone (test suites) are not kept.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    def start_workers(self) -> None:
        """Start this process's in-process workers, once (``AFTERWARD_WORKERS``).

        Called on each request and enqueue, so it must be cheap when they run already;
        a forked child sees another pid and starts its own.
        """
        if self._workers_pid == os.getpid():
            return
        settings = self.settings
        store = self.store
        if settings.workers == 0 or settings.eager or not isinstance(store, QueueStore):
            self._workers_pid = os.getpid()
            return
        with self._workers_lock:
            if self._workers_pid == os.getpid():
                return
            self._workers = WorkerGroup(
                self.app,
                store,
                self.afterward.tasks,
                threads=settings.workers,
                lease=settings.lease,
            )
            self._workers.start()
            self._workers_pid = os.getpid()
            self._is_workers_owned = True

    def use_workers(self, workers: WorkerGroup) -> None:
        """Make ``workers`` this process's workers (``flask afterward worker``).

        Jobs enqueued in this process (by other jobs) then wake them, and no
        ``AFTERWARD_WORKERS`` group starts beside them.
        """
        with self._workers_lock:
            self._workers = workers
            self._workers_pid = os.getpid()
            self._is_workers_owned = False

    def wake_workers(self) -> None:
        """A job was queued in this process: start or wake the local workers.

        An enqueue in a CLI command (``flask shell``, a ``flask send-mails`` of the
        app's) starts none: the command would run its jobs itself, then wait for them
        at exit. Its jobs wait for a web process's or ``flask afterward worker``'s.
        """
        if self._workers_pid != os.getpid() and click.get_current_context(silent=True) is not None:
            return
        self.start_workers()
        if self._workers is not None:
            self._workers.wake.set()

    def _own_workers(self) -> WorkerGroup | None:
        """The group this state started in this process; not the CLI's, nor a parent's."""
        if self._workers_pid == os.getpid() and self._is_workers_owned:
            return self._workers
        return None

    def _close_workers(self, timeout: float) -> int:
        workers = self._own_workers()
        self._workers = None
        return 0 if workers is None else workers.close(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Let pending work finish within ``timeout`` and stop every thread.

        Returns how many callbacks did not finish plus how many running jobs were put
        back in the queue.
        """
        atexit.unregister(self._exit_hook)
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        workers = self._own_workers()
        if workers is not None:
            workers.stop.set()  # stop claiming now; running jobs finish meanwhile
            workers.wake.set()
        pool = self.callbacks.pool
        left = pool.close(timeout) if pool is not None else 0
        left += self._close_workers(max(0.0, deadline - time.monotonic()))
        self.store.close()
        return left


def _close_at_exit(state: weakref.ref[_AppState]) -> None:
    alive = state()
    if alive is not None:
        alive.close()


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
        state = _AppState(app, self, settings)
        app.extensions[EXTENSION_KEY] = state
        got_request_exception.connect(record_unhandled_error, app)
        app.wsgi_app = AfterResponseMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, state.callbacks, on_request=state.start_workers
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
        config = TaskOptions(
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
            task = Task(fn, name=task_name, config=config)
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
            @functools.wraps(view)
            def accept(*args: t.Any, **kwargs: t.Any) -> t.Any:
                if REPLAY_KEY in request.environ:  # in the worker: run the view itself
                    return current_app.ensure_sync(view)(*args, **kwargs)
                limit = self._state(None).settings.max_payload
                if (request.content_length or 0) > limit:
                    abort(413, f"The request body is over AFTERWARD_MAX_PAYLOAD ({limit}).")
                check_job_urls()
                captured, secrets = capture_request()
                try:
                    job = task.enqueue((captured,), {}, secrets=secrets)
                except SerializationError as error:  # the body fits, headers and all do not
                    abort(413, f"The request is too large to store as a job. {error}")
                return accepted_response(job)

            return t.cast(ViewFunction, accept)

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
        store = self._state(app).store
        record = store.get(job_id)
        if record is None:
            raise JobNotFound(f"No job has the id {job_id!r}; it never existed or expired.")
        return Job(record, store)

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

    def _state(self, app: Flask | None) -> _AppState:
        app = app or t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
        try:
            state: _AppState = app.extensions[EXTENSION_KEY]
        except KeyError:
            raise NotInitialized(
                "flask-afterward is not registered on this app. Did you forget to call "
                "'afterward.init_app(app)'?"
            ) from None
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
