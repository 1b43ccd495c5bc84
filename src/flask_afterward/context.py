"""Capture the app and request context during a request; re-enter it in another thread.

Flask pops its context in ``wsgi_app`` before the server calls ``close()`` on the
response, so work that runs after the response has no context of its own. While the
request is still active we take what :func:`flask.copy_current_request_context` takes
(we call it: a copy of the request's context holding the same request and session
objects), and a shallow copy of ``g``, which Flask does not copy. Later, in another
thread, the copy is pushed, ``g`` is filled in, and popping it runs the app's teardown
functions, so extensions such as Flask-SQLAlchemy clean up exactly as after a view.

Public API only, on purpose: Flask 3.2 merged ``RequestContext`` into ``AppContext``
and deprecated ``flask.globals.request_ctx``, which broke the subclass of
``RequestContext`` this module had. ``copy_current_request_context``, the ``request``
and ``g`` proxies and ``app.app_context()`` mean the same on Flask 3.0 to 3.2.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from flask import copy_current_request_context
from flask import current_app
from flask import g
from flask import has_request_context
from flask import request
from werkzeug.datastructures import EnvironHeaders

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request

R = t.TypeVar("R")

#: What :func:`copy_current_request_context` returns for :func:`_fill_g_and_call`:
#: called with a copy of ``g``'s data and a function, it runs the function inside a
#: copy of the request's context.
InRequest = cabc.Callable[[dict[str, t.Any], cabc.Callable[[], R]], R]


class CapturedContext(t.NamedTuple):
    """The parts of an app and request context that outlive the request.

    ``in_request`` holds a copy of the request context (a new one per capture, so a
    callback never shares per-push state with the view's context, which the test
    client may keep pushed). The request object is the view's own; a server may empty
    the WSGI environ once the response is closed, to reuse it (uWSGI does), so
    :func:`detach` gives the request its own copy first. Form data and JSON the view
    already read stay readable, but the input stream is consumed, so read the body in
    the view. (A named tuple: one is made for every request with callbacks, and a
    frozen dataclass costs three times as much.)
    """

    app: Flask
    #: None when captured in an app context without a request
    request: Request | None
    #: a copy of ``g``'s attributes, given to every entry afresh
    g_data: dict[str, t.Any]
    #: runs a function in a copy of the request's context; None without a request
    in_request: InRequest[t.Any] | None

    @classmethod
    def capture(cls) -> CapturedContext:
        """Snapshot the active context. Needs an app context; a request one is optional.

        :raises RuntimeError: outside an app context (Flask's own error).
        """
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        g_data = dict(vars(g._get_current_object()))
        if not has_request_context():
            return cls(app, None, g_data, None)
        live: Request = request._get_current_object()  # type: ignore[attr-defined]
        return cls(app, live, g_data, copy_request_context())

    def run(self, fn: cabc.Callable[[], R]) -> R:
        """Call ``fn`` inside the captured context, with a fresh copy of ``g``.

        The context is pushed around the call and popped after it, which runs the
        teardown functions; an error they raise propagates (Flask's own behaviour).
        """
        if self.in_request is not None:
            return t.cast(R, self.in_request(self.g_data, fn))
        context = self.app.app_context()
        vars(context.g).update(self.g_data)
        with context:
            return fn()


def copy_request_context() -> InRequest[t.Any]:
    """A function that runs another inside a copy of the active request context.

    :func:`flask.copy_current_request_context` does the copying; it binds a URL
    adapter to the request now (a few microseconds), and matches the URL again when the
    copy is pushed, which leaves the request's rule and view arguments as they were.
    """
    return t.cast("InRequest[t.Any]", copy_current_request_context(_fill_g_and_call))


def _fill_g_and_call(g_data: dict[str, t.Any], fn: cabc.Callable[[], R]) -> R:
    # ``g`` belongs to the context that was just pushed (on Flask < 3.2, to the app
    # context the request context pushed for itself), so it is filled here, inside.
    if g_data:
        vars(g._get_current_object()).update(g_data)
    return fn()


def detach(live: Request) -> None:
    """Give ``live`` its own copy of the WSGI environ, which the server may reuse.

    Done in place, on the view's request, once Flask is done with it (its context
    popped, the response closed): what it parsed (args, form, JSON) stays, and its
    headers are read again from the copy.
    """
    live.environ = dict(live.environ)
    live.headers = EnvironHeaders(live.environ)
