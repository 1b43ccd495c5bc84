"""The ``Afterward`` extension object: registration, per-app state, decorators."""

from __future__ import annotations

import collections.abc as cabc
import logging
import signal
import sys
import threading
import typing as t

from flask import current_app

from .callbacks import AfterResponseMiddleware
from .callbacks import CallbackRunner
from .callbacks import capture_on_teardown
from .callbacks import ResponseInfo
from .config import EXTENSION_KEY
from .config import Settings
from .errors import ConfigurationError
from .errors import NotInitialized
from .pool import CallbackPool

if t.TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_afterward")

ResponseHook = t.TypeVar("ResponseHook", bound=cabc.Callable[[ResponseInfo], object])


class _AppState:
    """Everything flask-afterward keeps for one app, in ``app.extensions["afterward"]``."""

    def __init__(self, app: Flask, afterward: Afterward, settings: Settings) -> None:
        self.afterward = afterward
        self.settings = settings
        pool = None
        if not _is_uwsgi_without_threads():
            pool = CallbackPool(
                threads=settings.callback_threads,
                max_pending=settings.max_pending_callbacks,
                shutdown_timeout=settings.shutdown_timeout,
            )
        self.callbacks = CallbackRunner(app, afterward._response_hooks, pool)

    def close(self, timeout: float | None = None) -> int:
        """Let pending work finish within ``timeout`` and stop every thread."""
        pool = self.callbacks.pool
        return pool.close(timeout) if pool is not None else 0


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
        app.teardown_request(capture_on_teardown)
        app.wsgi_app = AfterResponseMiddleware(app.wsgi_app, state.callbacks)  # type: ignore[method-assign]
        _exit_cleanly_on_sigterm()

    def after_response(self, hook: ResponseHook) -> ResponseHook:
        """Decorate a function to run after every response, with a :class:`ResponseInfo`.

        Hooks run like :func:`after_this_response` callbacks (pool, context, isolated
        failures), after the request's own callbacks, and also after responses that
        ended in an unhandled exception, so they suit logging and auditing.

        .. versionadded:: 0.1
        """
        self._response_hooks.append(hook)
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
