"""Capture the app and request context during a request; re-enter it in another thread.

Flask pops its contexts in ``wsgi_app`` before the server calls ``close()`` on the
response, so work that runs after the response has no context of its own. We take a
snapshot while the request is still active (the same objects
:func:`flask.copy_current_request_context` keeps: the request and its session) plus a
shallow copy of ``g``, and later push a fresh app context and a
:class:`~flask.ctx.RequestContext` built on that same request object. Popping it runs
the app's teardown functions, so extensions such as Flask-SQLAlchemy clean up exactly
as they do after a view.
"""

from __future__ import annotations

import types
import typing as t

from flask import has_request_context
from flask.ctx import RequestContext
from flask.globals import app_ctx
from flask.globals import request_ctx
from werkzeug.datastructures import EnvironHeaders

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from flask.ctx import AppContext
    from flask.sessions import SessionMixin


class CapturedContext(t.NamedTuple):
    """The parts of an app and request context that outlive the request.

    The request is a shallow copy with its own copy of the WSGI environ, because a
    server may empty the environ once the response is closed, to reuse it (uWSGI
    does). Form data and JSON the view already read stay readable, but the input
    stream is consumed, so read the body in the view. (A named tuple: one is made for
    every request with callbacks, and a frozen dataclass costs three times as much.)
    """

    app: Flask
    request: Request | None
    session: SessionMixin | None
    g_data: dict[str, t.Any]
    #: the request's own context, which Flask is done with by the time we enter it
    request_context: RequestContext | None

    @classmethod
    def capture(cls) -> CapturedContext:
        """Snapshot the active context. Needs an app context; a request one is optional."""
        app_context: AppContext = app_ctx._get_current_object()  # type: ignore[attr-defined]
        if not has_request_context():
            return cls(app_context.app, None, None, dict(vars(app_context.g)), None)
        return cls.of(app_context, request_ctx._get_current_object())  # type: ignore[attr-defined]

    @classmethod
    def of(cls, app_context: AppContext, request_context: RequestContext) -> CapturedContext:
        """Snapshot these active contexts (what :meth:`capture` does, given them)."""
        return cls(
            app_context.app,
            _detached(request_context.request),
            request_context.session,
            dict(vars(app_context.g)),
            request_context,
        )

    def enter(self) -> Entered:
        """Push an app context (with the copied ``g``) and, if captured, the request.

        Use it as a context manager; leaving it pops both and runs the teardown
        functions.
        """
        return Entered(self)


class Entered:
    """A :class:`CapturedContext`, pushed; ``with`` pops it again.

    A class rather than :func:`contextlib.contextmanager`: this runs for every request
    that has callbacks, and a generator costs a microsecond more.
    """

    __slots__ = ("_app_context", "_request_context")

    def __init__(self, captured: CapturedContext) -> None:
        self._app_context: AppContext = captured.app.app_context()
        vars(self._app_context.g).update(captured.g_data)
        self._request_context: RequestContext | None = None
        if captured.request is not None and captured.request_context is not None:
            self._request_context = _ReenteredRequestContext(
                captured.request_context, captured.request
            )

    def __enter__(self) -> None:
        self._app_context.push()
        if self._request_context is not None:
            try:
                self._request_context.push()
            except BaseException:
                self._app_context.pop()
                raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        try:
            if self._request_context is not None:
                self._request_context.pop(error)
        finally:
            self._app_context.pop(error)


class _ReenteredRequestContext(RequestContext):
    """The request's own context, entered again after the response, on a request copy.

    Built from the context Flask made for the request instead of anew: a new one binds
    a URL adapter to the environ and matches the URL again, which was a third of what
    running a no-op callback cost. Popping it runs the teardown functions, as Flask's
    pop after a view does.
    """

    def __init__(self, original: RequestContext, request: Request) -> None:
        # Not super().__init__(): that builds what we copy here. The URL adapter,
        # session and flashes are the request's; the per-push state is our own.
        vars(self).update(vars(original))
        self.request = request
        self._after_request_functions = []
        self._cv_tokens = []

    def match_request(self) -> None:
        """Matched during the request: the request copy keeps its rule and view args."""


def _detached(live: Request) -> Request:
    """``live``, sharing what it parsed (args, form, JSON), on a copy of its environ."""
    detached: Request = object.__new__(type(live))
    vars(detached).update(vars(live))
    detached.environ = dict(live.environ)
    # The headers read straight from the environ they were made with.
    detached.headers = EnvironHeaders(detached.environ)
    return detached
