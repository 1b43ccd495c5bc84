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

import collections.abc as cabc
import contextlib
import copy
import dataclasses
import typing as t

from flask import current_app
from flask import g
from flask import has_request_context
from flask import request
from flask import session
from flask.ctx import RequestContext
from werkzeug.datastructures import EnvironHeaders

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from flask.sessions import SessionMixin


@dataclasses.dataclass(frozen=True, slots=True)
class CapturedContext:
    """The parts of an app and request context that outlive the request.

    The request is a shallow copy with its own copy of the WSGI environ, because a
    server may empty the environ once the response is closed, to reuse it (uWSGI
    does). Form data and JSON the view already read stay readable, but the input
    stream is consumed, so read the body in the view.
    """

    app: Flask
    request: Request | None
    session: SessionMixin | None
    g_data: dict[str, t.Any]

    @classmethod
    def capture(cls) -> CapturedContext:
        """Snapshot the active context. Needs an app context; a request one is optional."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        g_data = dict(vars(g._get_current_object()))
        if not has_request_context():
            return cls(app, None, None, g_data)
        return cls(
            app,
            _detached(request._get_current_object()),  # type: ignore[attr-defined]
            session._get_current_object(),  # type: ignore[attr-defined]
            g_data,
        )

    @contextlib.contextmanager
    def enter(self) -> cabc.Iterator[None]:
        """Push an app context (with the copied ``g``) and, if captured, the request."""
        app_ctx = self.app.app_context()
        vars(app_ctx.g).update(self.g_data)
        with app_ctx:
            if self.request is None:
                yield
                return
            request_ctx = RequestContext(
                self.app, self.request.environ, request=self.request, session=self.session
            )
            with request_ctx:
                yield


def _detached(live: Request) -> Request:
    """``live``, sharing what it parsed (args, form, JSON), on a copy of its environ."""
    detached = copy.copy(live)
    detached.environ = dict(live.environ)
    # The headers read straight from the environ they were made with.
    detached.headers = EnvironHeaders(detached.environ)
    return detached
