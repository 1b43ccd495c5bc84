"""Tier 1: run callbacks after the response has been delivered.

The hook is the WSGI ``close()`` of the response iterable (PEP 3333): servers call it
after the last byte is written, for buffered, streamed and ``send_file`` responses
alike. ``close()`` only hands the callbacks to a bounded pool, because whatever runs
inside it ties up the server thread or process that served the request (the next
request on a kept-alive connection waits, and some servers do not finish the response
at the client until ``close()`` returns).

``send_file``: Werkzeug passes the server's ``wsgi.file_wrapper`` object straight
through, and servers only take their sendfile fast path when the app returns that very
object. So instead of wrapping the response we wrap the *file* given to the server's
wrapper: its ``close()`` is our signal, and the fast path stays.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import dataclasses
import functools
import inspect
import logging
import time
import typing as t

from flask import current_app
from flask import g
from flask import request

from .config import EXTENSION_KEY
from .context import CapturedContext
from .context import copy_request_context
from .context import detach
from .context import InRequest
from .errors import NotInitialized
from .errors import OutsideRequest
from .pool import CallbackPool
from .signals import callback_failed

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from flask import Request

logger = logging.getLogger(__name__)

P = t.ParamSpec("P")

#: Where a request's :class:`RequestCallbacks` lives in the WSGI environ.
ENVIRON_KEY: t.Final = "flask_afterward.callbacks"
_FILE_WRAPPER_KEY: t.Final = "flask_afterward.file_wrapper"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseInfo:
    """What an ``@afterward.after_response`` hook learns about the response it follows.

    .. versionadded:: 0.1
    """

    method: str  #: the request method, ``"GET"``
    path: str  #: the path below the app's root, ``"/users/1"``
    endpoint: str | None  #: the matched endpoint; None when no route matched
    status_code: int | None  #: None if the app raised before starting the response
    duration: float  #: seconds from receiving the request to delivering the response
    remote_addr: str | None  #: the client address as the server saw it


class Call(t.NamedTuple):
    """One function with its arguments, waiting to run."""

    fn: cabc.Callable[..., object]
    args: tuple[t.Any, ...]
    kwargs: dict[str, t.Any]


class RequestCallbacks:
    """What one request asked to run after its response, and what we know about it.

    Lives in the WSGI environ. ``calls`` run once the response is delivered;
    ``on_dropped`` runs instead when the request ended in an unhandled exception
    (tier 2 cancels its deferred jobs there).

    When the first callback is added it keeps the request, a copy of its context
    (:func:`~flask_afterward.context.copy_request_context`) and the live namespace of
    ``g``, and makes the callbacks' context from them only on delivery, so ``g`` is
    copied as the request's teardown left it. Nothing runs at the end of a request
    that has no callbacks (a ``teardown_request`` function would, on every request).
    """

    __slots__ = (
        "calls",
        "on_dropped",
        "request",
        "in_request",
        "g_data",
        "error",
        "status_code",
        "started",
        "is_delivered",
    )

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.on_dropped: list[Call] = []
        self.request: Request | None = None
        self.in_request: InRequest[t.Any] | None = None
        #: ``g``'s own ``__dict__``, not a copy: it is copied on delivery
        self.g_data: dict[str, t.Any] | None = None
        self.error: BaseException | None = None
        self.status_code: int | None = None
        self.started = time.perf_counter()
        self.is_delivered = False

    def remember(self, live: Request) -> None:
        """Keep the active request and a copy of its context, unless already kept.

        Once delivered nothing is kept any more: the request holds its environ, which
        holds these callbacks, and keeping it would leave a reference cycle.
        """
        if self.request is None and not self.is_delivered:
            self.request = live
            self.g_data = vars(g._get_current_object())
            self.in_request = copy_request_context()


def after_this_response(fn: cabc.Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` after the current response has been delivered.

    The client gets the response without waiting, and so does the server worker:
    ``fn`` runs on a small thread pool, inside an app context and a copy of this
    request's context (``request``, ``session`` and ``g`` are readable). Callbacks of
    one request run in the order they were added; one that raises is logged and the
    others still run. If the request ends in an unhandled exception, they are dropped,
    like :func:`flask.after_this_request`. ``async def`` functions are run with
    :func:`asyncio.run`.

    .. code-block:: python

        @app.post("/signup")
        def signup():
            user = create_user(request.form)
            after_this_response(send_welcome_mail, user.email)
            return redirect(url_for("welcome"))

    :param fn: the function to call; its return value is ignored.
    :raises OutsideRequest: when called outside a request.
    :raises NotInitialized: when the app has no ``Afterward`` extension.

    .. versionadded:: 0.1
    """
    callbacks = current_request_callbacks()
    call = Call(fn, args, kwargs)
    if callbacks.is_delivered:
        # Called from a callback of this same request: its response is out already,
        # so "after the response" is now.
        runner: CallbackRunner = current_app.extensions[EXTENSION_KEY].callbacks
        runner.dispatch(CapturedContext.capture(), [call])
    else:
        callbacks.calls.append(call)


def current_request_callbacks() -> RequestCallbacks:
    """The current request's :class:`RequestCallbacks`, created on first use."""
    try:
        live: Request = request._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:
        raise OutsideRequest() from None
    environ = live.environ
    callbacks: RequestCallbacks | None = environ.get(ENVIRON_KEY)
    if callbacks is None:
        if EXTENSION_KEY not in current_app.extensions:
            raise NotInitialized()
        callbacks = environ[ENVIRON_KEY] = RequestCallbacks()
    callbacks.remember(live)
    return callbacks


def _existing_callbacks() -> tuple[Request, RequestCallbacks | None]:
    """The active request, and its :class:`RequestCallbacks` if it has any."""
    live: Request = request._get_current_object()  # type: ignore[attr-defined]
    return live, live.environ.get(ENVIRON_KEY)


def remember_contexts(sender: Flask, **extra: object) -> None:
    """``request_started`` receiver, while there are ``after_response`` hooks.

    Their request may add no callback of its own, yet the hooks run in its context.
    """
    live, callbacks = _existing_callbacks()
    if callbacks is not None:
        callbacks.remember(live)


def record_unhandled_error(sender: Flask, exception: BaseException, **extra: object) -> None:
    """``got_request_exception`` receiver: the request's callbacks will be dropped.

    Flask sends it for exceptions no error handler dealt with, exactly those it also
    passes to teardown; handled ones (``abort(404)``, an ``errorhandler``) keep them.
    """
    _, callbacks = _existing_callbacks()
    if callbacks is not None and callbacks.error is None:
        callbacks.error = exception


class CallbackRunner:
    """One app's tier-1 machinery: the response hooks and the pool they run on."""

    def __init__(
        self,
        app: Flask,
        response_hooks: list[cabc.Callable[[ResponseInfo], object]],
        pool: CallbackPool | None,
    ) -> None:
        self.app = app
        #: shared with the ``Afterward`` object, so hooks added later still count
        self.response_hooks = response_hooks
        #: None runs everything inline (uWSGI without threads)
        self.pool = pool

    def deliver(self, callbacks: RequestCallbacks, environ: WSGIEnvironment) -> None:
        """The response is out: hand this request's callbacks to the pool. Idempotent."""
        if callbacks.is_delivered:
            return
        callbacks.is_delivered = True
        calls = callbacks.calls
        if callbacks.error is not None:
            if calls:
                logger.debug(
                    "Dropped %d callbacks: the request raised %r.", len(calls), callbacks.error
                )
            calls = callbacks.on_dropped
        live, in_request, g_data = callbacks.request, callbacks.in_request, callbacks.g_data
        # The request holds its environ, which holds these callbacks: without this,
        # every request would leave a reference cycle for the garbage collector.
        callbacks.request = callbacks.in_request = callbacks.g_data = None
        if self.response_hooks:
            rule = None if live is None else live.url_rule
            info = ResponseInfo(
                method=environ.get("REQUEST_METHOD", ""),
                path=environ.get("PATH_INFO", ""),
                endpoint=None if rule is None else rule.endpoint,
                status_code=callbacks.status_code,
                duration=time.perf_counter() - callbacks.started,
                remote_addr=environ.get("REMOTE_ADDR"),
            )
            calls = [*calls, *(Call(hook, (info,), {}) for hook in self.response_hooks)]
        if not calls:
            return
        if live is None or in_request is None or g_data is None:
            context = CapturedContext(self.app, None, {}, None)
        else:
            # Now, inside close(): the server may reuse the environ once it returns.
            detach(live)
            context = CapturedContext(self.app, live, dict(g_data), in_request)
        self.dispatch(context, calls)

    def dispatch(self, context: CapturedContext, calls: list[Call]) -> None:
        """Run ``calls`` in order, inside ``context``, on the pool or else right here."""
        batch = functools.partial(_run_batch, context, calls)
        if self.pool is None or not self.pool.submit(batch, len(calls)):
            batch()


def _run_batch(context: CapturedContext, calls: list[Call]) -> None:
    try:
        context.run(functools.partial(_run_each, context.app, calls))
    except Exception:
        # Only context set-up or a teardown function can get here.
        logger.exception("Error around after-response callbacks (context or teardown).")


def _run_each(app: Flask, calls: list[Call]) -> None:
    for call in calls:
        _run_isolated(app, call)


def _run_isolated(app: Flask, call: Call) -> None:
    """Run one callback; whatever it raises is logged and signalled, never propagated."""
    try:
        result = call.fn(*call.args, **call.kwargs)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    except Exception as error:
        logger.exception("After-response callback %s failed.", _name_of(call.fn))
        try:
            callback_failed.send(app, callback=call.fn, exception=error)
        except Exception:
            logger.exception("A callback_failed receiver failed.")


def _name_of(fn: object) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}" if module else name


class AfterResponseMiddleware:
    """WSGI middleware that calls :meth:`CallbackRunner.deliver` from ``close()``.

    Every response is wrapped, even one whose request has registered no callback yet:
    a view streaming with :func:`flask.stream_with_context` can still register some
    while the server iterates. Iteration is not wrapped, so that costs nothing per chunk.
    A server's ``wsgi.file_wrapper`` object is returned untouched (sendfile).

    :param on_request: called first for every request (the lazy start of job workers);
        here rather than in a ``before_request`` function, which costs Flask's hook
        dispatch on every request.
    """

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        runner: CallbackRunner,
        on_request: cabc.Callable[[], None] = lambda: None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.runner = runner
        self.on_request = on_request

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> cabc.Iterable[bytes]:
        self.on_request()
        runner = self.runner
        if runner.response_hooks:
            callbacks = environ[ENVIRON_KEY] = RequestCallbacks()
            start_response = _recording_status(start_response, callbacks)
        server_file_wrapper = environ.get("wsgi.file_wrapper")
        if server_file_wrapper is not None:
            environ["wsgi.file_wrapper"] = functools.partial(
                _wrap_file, environ, server_file_wrapper, runner
            )
        try:
            iterable: cabc.Iterable[bytes] = self.wsgi_app(environ, start_response)
        except BaseException as error:
            # PROPAGATE_EXCEPTIONS (debug, testing): no response, so no close().
            self._deliver_unanswered(environ, error)
            raise
        finally:
            if server_file_wrapper is not None:
                # Servers test isinstance(result, environ["wsgi.file_wrapper"]).
                environ["wsgi.file_wrapper"] = server_file_wrapper
        server_file: object = environ.get(_FILE_WRAPPER_KEY)
        if iterable is server_file:
            return iterable
        return ClosingIterable(iterable, functools.partial(_deliver_if_any, runner, environ))

    def _deliver_unanswered(self, environ: WSGIEnvironment, error: BaseException) -> None:
        callbacks: RequestCallbacks | None = environ.get(ENVIRON_KEY)
        if callbacks is not None:
            callbacks.error = callbacks.error or error
            self.runner.deliver(callbacks, environ)


class ClosingIterable:
    """The app's iterable, plus a function to call after the server closes it.

    Iteration goes straight to the wrapped iterable, so there is no per-chunk cost.
    """

    __slots__ = ("_iterable", "_on_close")

    def __init__(self, iterable: cabc.Iterable[bytes], on_close: cabc.Callable[[], None]):
        self._iterable = iterable
        self._on_close = on_close

    def __iter__(self) -> cabc.Iterator[bytes]:
        return iter(self._iterable)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def _recording_status(start_response: StartResponse, callbacks: RequestCallbacks) -> StartResponse:
    def recording_start_response(
        status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        callbacks.status_code = int(status[:3])
        return start_response(status, headers, exc_info)

    return recording_start_response


def _wrap_file(
    environ: WSGIEnvironment,
    server_file_wrapper: t.Callable[..., cabc.Iterable[bytes]],
    runner: CallbackRunner,
    filelike: t.Any,
    block_size: int = 8192,
) -> cabc.Iterable[bytes]:
    """Our ``wsgi.file_wrapper`` during the app call: the server's, around a hooked file."""
    on_close = functools.partial(_deliver_if_any, runner, environ)
    wrapper = server_file_wrapper(_CloseHookedFile(filelike, on_close), block_size)
    environ[_FILE_WRAPPER_KEY] = wrapper
    return wrapper


def _deliver_if_any(runner: CallbackRunner, environ: WSGIEnvironment) -> None:
    callbacks: RequestCallbacks | None = environ.get(ENVIRON_KEY)
    if callbacks is not None:
        runner.deliver(callbacks, environ)


class _CloseHookedFile:
    """A file whose ``close()`` also delivers the request's callbacks.

    Everything else is delegated with ``__getattr__`` on purpose: servers probe the
    file with ``hasattr`` (``fileno`` for sendfile, ``seek``/``tell`` for the length),
    and the answers must be the real file's.
    """

    def __init__(self, file: t.Any, on_close: cabc.Callable[[], None]) -> None:
        self._file = file
        self._on_close = on_close

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._file, name)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._on_close()
