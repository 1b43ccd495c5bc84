"""Capture a request as JSON, and replay it through the app later, in a worker.

This is what makes ``@afterward.accepted`` views behave in the worker as they would
have in the request: the request is rebuilt (method, path, query string, headers, body,
remote address) and dispatched with ``full_dispatch_request``, so ``before_request``
hooks, ``g``, the session (from the Cookie header), Flask-Login's ``current_user`` and
error handlers all work, and the view's complete response becomes the job's result.

Headers that carry credentials (``Cookie``, ``Authorization``) are kept apart from the
payload, in the job's ``secrets``, which the store wipes when the job finishes.

The path and query string are stored as the server gave them (``%3F`` stays a
character of the path); a body the app already parsed as a form (a CSRF hook reads
``request.form`` before the view) is encoded again from the parsed form.
"""

from __future__ import annotations

import base64
import collections.abc as cabc
import inspect
import typing as t
import urllib.parse

from flask import current_app
from flask import Flask
from flask import request
from werkzeug.datastructures import MultiDict
from werkzeug.test import encode_multipart
from werkzeug.test import EnvironBuilder

from .callbacks import CallbackRunner
from .callbacks import ENVIRON_KEY
from .callbacks import RequestCallbacks
from .config import EXTENSION_KEY
from .errors import JobCancelled
from .errors import JobTimeout
from .errors import UnsupportedVersion
from .jobs import current_job
from .jobs import reset_current
from .jobs import RunningJob
from .jobs import set_current
from .serializers import loads

if t.TYPE_CHECKING:
    from flask import Response

    from .records import JobRecord

#: Headers stored as secrets and wiped when the job finishes.
SECRET_HEADERS: t.Final = frozenset({"cookie", "authorization", "proxy-authorization"})
#: Set in the replayed request's environ (to the job id), so the view runs for real.
REPLAY_KEY: t.Final = "flask_afterward.replay"
#: Headers the rebuilt request gets anew rather than from the capture: the body is
#: stored whole (no longer chunked) and its length is measured again.
_REBUILT_HEADERS: t.Final = frozenset({"content-length", "host", "transfer-encoding"})
#: Form bodies that parsing consumes; see :func:`_body`.
_FORM_TYPES: t.Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
#: Characters a request URI keeps unquoted (RFC 3986 pchar and "/").
_URI_SAFE: t.Final = "/:@!$&'()*+,;=-._~"

#: The version of :class:`CapturedRequest` and :class:`StoredResponse` this code writes.
FORMAT_VERSION: t.Final = 1


class CapturedRequest(t.TypedDict):
    """A request as stored (JSON) in an accepted view's job, to be replayed.

    Stored jobs outlive a deploy, so the shape is versioned: a later release that
    changes it bumps ``version`` and upgrades older rows in :func:`checked_request`.
    Rows written before the key existed are version 1. Lists stand for pairs, because
    JSON has no tuples.
    """

    version: int  #: :data:`FORMAT_VERSION` when written
    method: str
    scheme: str
    host: str
    server: list[str]  #: ``[SERVER_NAME, SERVER_PORT]``
    script_name: str
    path_info: str  #: as the server gave it, not decoded; the replay uses it
    path: str  #: decoded, for people reading the job
    query_string: str
    headers: list[list[str]]  #: ``[name, value]`` pairs, secrets and rebuilt ones left out
    body: str  #: base64
    remote_addr: str | None
    endpoint: str | None
    view_args: dict[str, t.Any]


class StoredResponse(t.TypedDict):
    """An accepted view's response, as stored (JSON) for its result URL.

    Versioned like :class:`CapturedRequest`; results stored before the key existed
    are version 1.
    """

    version: int  #: :data:`FORMAT_VERSION` when written
    status: int
    headers: list[list[str]]  #: ``[name, value]`` pairs, without Content-Length
    body: str  #: base64


#: Whether ``Flask.full_dispatch_request`` takes the context (Flask >= 3.2).
_DISPATCH_TAKES_CONTEXT: t.Final = (
    "ctx" in inspect.signature(Flask.full_dispatch_request).parameters
)


def capture_request() -> tuple[CapturedRequest, dict[str, str]]:
    """The current request as JSON-ready data, and its secret headers apart.

    The path and query string are kept as the WSGI server gave them (not decoded), so
    ``%3F`` or ``%2F`` in a path come back as they were. The body is read whole; the
    caller bounds its size.
    """
    environ = request.environ
    headers: list[list[str]] = []
    secrets: dict[str, str] = {}
    body, content_type = _body()
    for name, value in request.headers.items():
        if name.lower() in SECRET_HEADERS:
            secrets[name] = value
        elif name.lower() == "content-type" and content_type is not None:
            headers.append([name, content_type])
        elif name.lower() not in _REBUILT_HEADERS:
            headers.append([name, value])
    captured: CapturedRequest = {
        "version": FORMAT_VERSION,
        "method": request.method,
        "scheme": request.scheme,
        "host": request.host,
        "server": [environ.get("SERVER_NAME", ""), str(environ.get("SERVER_PORT", ""))],
        "script_name": environ.get("SCRIPT_NAME", ""),
        "path_info": environ.get("PATH_INFO", ""),
        "path": request.path,  # for people reading the job; the replay uses path_info
        "query_string": environ.get("QUERY_STRING", ""),
        "headers": headers,
        "body": base64.b64encode(body).decode("ascii"),
        "remote_addr": request.remote_addr,
        "endpoint": request.endpoint,
        "view_args": request.view_args or {},
    }
    return captured, secrets


def checked_request(data: cabc.Mapping[str, t.Any]) -> CapturedRequest:
    """``data`` as a :class:`CapturedRequest` of the current version.

    :raises UnsupportedVersion: when it was written in a version this code does not
        know (by a newer flask-afterward).
    """
    _check_version(data, "captured request")
    return t.cast(CapturedRequest, {**data, "version": FORMAT_VERSION})


def _check_version(data: cabc.Mapping[str, t.Any], what: str) -> None:
    # Rows written before the formats had a version are version 1.
    version = data.get("version", 1)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(
            f"This stored {what} has format version {version!r}, but this release of"
            f" flask-afterward reads only version {FORMAT_VERSION}. It was probably"
            " written by a newer release: upgrade this one, or let the release that"
            " wrote it finish its jobs."
        )


def _body() -> tuple[bytes, str | None]:
    """The request body, and a new Content-Type if it had to be encoded again.

    Parsing a form (``request.form``, e.g. in a CSRF ``before_request`` hook) consumes
    the body, after which ``get_data()`` is empty: the form is then encoded again
    from ``request.form`` and ``request.files``.
    """
    body = request.get_data()
    if body or request.mimetype not in _FORM_TYPES:
        return body, None
    if request.mimetype == "multipart/form-data":
        fields: MultiDict[str, t.Any] = MultiDict(
            [*request.form.items(multi=True), *request.files.items(multi=True)]
        )
        boundary, body = encode_multipart(fields)
        for storage in request.files.values():
            storage.stream.seek(0)
        return body, f'multipart/form-data; boundary="{boundary}"'
    return urllib.parse.urlencode(list(request.form.items(multi=True))).encode(), None


def rebuild_environ(captured: CapturedRequest, secrets: dict[str, str]) -> dict[str, t.Any]:
    """A WSGI environ equivalent to the captured request."""
    server_name, server_port = captured["server"]
    script_name = captured["script_name"]
    path_info = captured["path_info"]
    query_string = captured["query_string"]
    uri = urllib.parse.quote((script_name + path_info).encode("latin-1"), safe=_URI_SAFE)
    if query_string:
        uri += "?" + query_string
    overrides = {
        "wsgi.url_scheme": captured["scheme"],
        "HTTP_HOST": captured["host"],
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query_string,
        "REQUEST_URI": uri,
        "RAW_URI": uri,
    }
    remote_addr = captured["remote_addr"]
    if remote_addr is not None:
        overrides["REMOTE_ADDR"] = remote_addr
    headers = [(name, value) for name, value in captured["headers"]]
    builder = EnvironBuilder(
        method=captured["method"],
        headers=[*headers, *secrets.items()],
        data=base64.b64decode(captured["body"]),
        environ_overrides=overrides,
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def replay(captured: CapturedRequest, secrets: dict[str, str], job_id: str) -> StoredResponse:
    """Dispatch the captured request through the current app; return its response as data."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = rebuild_environ(captured, secrets)
    environ[REPLAY_KEY] = job_id
    try:
        context = app.request_context(environ)
        with context:
            response = _full_dispatch_request(app, context)
            deferred: RequestCallbacks | None = environ.get(ENVIRON_KEY)
            if deferred is not None:
                deferred.status_code = response.status_code
            try:
                _drop_session_cookie(app, response)
                return encode_response(response)
            finally:
                response.close()
    finally:
        # No server closes this response, so deliver what the view deferred here:
        # its after_this_response callbacks, and the release (or, if the view raised,
        # the cancel) of its .after_response() jobs.
        _deliver_replayed(app, environ)


def _full_dispatch_request(app: Flask, context: t.Any) -> Response:
    """``app.full_dispatch_request`` in the pushed ``context``, on every Flask we support.

    Flask 3.2 passes the context in (``full_dispatch_request(ctx)``); before, the method
    took no argument and found the context itself. Its public signature tells which.
    """
    if _DISPATCH_TAKES_CONTEXT:
        dispatch = t.cast("t.Callable[[t.Any], Response]", app.full_dispatch_request)
        return dispatch(context)
    return app.full_dispatch_request()


def _deliver_replayed(app: Flask, environ: dict[str, t.Any]) -> None:
    callbacks: RequestCallbacks | None = environ.get(ENVIRON_KEY)
    if callbacks is not None:
        runner: CallbackRunner = app.extensions[EXTENSION_KEY].callbacks
        runner.deliver(callbacks, environ)


def _drop_session_cookie(app: Flask, response: Response) -> None:
    """Keep the session cookie out of the stored result.

    Replaying the request's Cookie makes Flask send the session back (a permanent
    session is refreshed on every request). Stored, it would outlive the job's wiped
    secrets as a credential anyone with the result URL could use, and served later it
    would undo a logout. The client still holds its own session cookie.
    """
    name = app.session_interface.get_cookie_name(app)
    cookies = response.headers.getlist("Set-Cookie")
    kept = [cookie for cookie in cookies if cookie.partition("=")[0].strip() != name]
    if len(kept) < len(cookies):
        del response.headers["Set-Cookie"]
        for cookie in kept:
            response.headers.add("Set-Cookie", cookie)


def encode_response(response: Response) -> StoredResponse:
    """Status, headers and body of a response, as JSON-ready data."""
    # send_file() answers in passthrough mode, for the server to send the file; read
    # it now instead (it may be gone when the result is fetched).
    response.direct_passthrough = False
    body = response.get_data()
    headers = [
        [name, value]
        for name, value in response.headers.items()
        if name.lower() != "content-length"
    ]
    return {
        "version": FORMAT_VERSION,
        "status": response.status_code,
        "headers": headers,
        "body": base64.b64encode(body).decode("ascii"),
    }


def decode_response(data: cabc.Mapping[str, t.Any]) -> Response:
    """The response :func:`encode_response` stored, ready to send again.

    :raises UnsupportedVersion: when it was stored in a format version this code
        does not know (by a newer flask-afterward).
    """
    _check_version(data, "response")
    stored = t.cast(StoredResponse, data)
    return current_app.response_class(
        base64.b64decode(stored["body"]),
        status=stored["status"],
        headers=[(name, value) for name, value in stored["headers"]],
    )


def run_accepted_view(captured: CapturedRequest) -> StoredResponse:
    """The built-in task behind ``@afterward.accepted``: replay the request here.

    A cancel or timeout raised by ``progress()`` in the view ends the job even when an
    error handler (``@app.errorhandler(Exception)``) turned it into a response.
    """
    running = current_job._get_current_object()  # type: ignore[attr-defined]
    stopped: list[JobCancelled | JobTimeout] = []

    def report(fraction: float, message: str | None) -> None:
        try:
            running.progress(fraction, message)
        except (JobCancelled, JobTimeout) as stop:
            stopped.append(stop)
            raise

    record: JobRecord = running.record
    secrets = loads(record.secrets) if record.secrets else {}
    token = set_current(RunningJob(record, report))
    try:
        response = replay(checked_request(captured), secrets, record.id)
    finally:
        reset_current(token)
    if stopped:
        raise stopped[0]
    return response
