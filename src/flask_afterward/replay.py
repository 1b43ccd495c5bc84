"""Capture a request as JSON, and replay it through the app later, in a worker.

This is what makes ``@afterward.accepted`` views behave in the worker as they would
have in the request: the request is rebuilt (method, path, query string, headers, body,
remote address) and dispatched with ``full_dispatch_request``, so ``before_request``
hooks, ``g``, the session (from the Cookie header), Flask-Login's ``current_user`` and
error handlers all work, and the view's complete response becomes the job's result.

Headers that carry credentials (``Cookie``, ``Authorization``) are kept apart from the
payload, in the job's ``secrets``, which the store wipes when the job finishes.
"""

from __future__ import annotations

import base64
import typing as t

from flask import current_app
from flask import request
from werkzeug.test import EnvironBuilder

from .jobs import current_job
from .serializers import loads

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Response

#: Headers stored as secrets and wiped when the job finishes.
SECRET_HEADERS: t.Final = frozenset({"cookie", "authorization", "proxy-authorization"})
#: Set in the replayed request's environ (to the job id), so the view runs for real.
REPLAY_KEY: t.Final = "flask_afterward.replay"
#: Headers the rebuilt request gets anew rather than from the capture.
_REBUILT_HEADERS: t.Final = frozenset({"content-length", "host"})

CapturedRequest = dict[str, t.Any]


def capture_request() -> tuple[CapturedRequest, dict[str, str]]:
    """The current request as JSON-ready data, and its secret headers apart.

    The body is read whole (``request.get_data()``); the caller bounds its size.
    """
    headers: list[tuple[str, str]] = []
    secrets: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower() in SECRET_HEADERS:
            secrets[name] = value
        elif name.lower() not in _REBUILT_HEADERS:
            headers.append((name, value))
    captured = {
        "method": request.method,
        "scheme": request.scheme,
        "host": request.host,
        "script_root": request.root_path,
        "path": request.path,
        "query_string": request.query_string.decode("latin-1"),
        "headers": headers,
        "body": base64.b64encode(request.get_data()).decode("ascii"),
        "remote_addr": request.remote_addr,
        "endpoint": request.endpoint,
        "view_args": request.view_args or {},
    }
    return captured, secrets


def rebuild_environ(captured: CapturedRequest, secrets: dict[str, str]) -> dict[str, t.Any]:
    """A WSGI environ equivalent to the captured request."""
    headers = [*captured["headers"], *secrets.items()]
    builder = EnvironBuilder(
        path=captured["path"],
        base_url=f"{captured['scheme']}://{captured['host']}{captured['script_root']}",
        query_string=captured["query_string"],
        method=captured["method"],
        headers=headers,
        data=base64.b64decode(captured["body"]),
        environ_base={"REMOTE_ADDR": captured["remote_addr"] or ""},
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def replay(captured: CapturedRequest, secrets: dict[str, str], job_id: str) -> dict[str, t.Any]:
    """Dispatch the captured request through the current app; return its response as data."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = rebuild_environ(captured, secrets)
    environ[REPLAY_KEY] = job_id
    with app.request_context(environ):
        response = app.full_dispatch_request()
        try:
            return encode_response(response)
        finally:
            response.close()


def encode_response(response: Response) -> dict[str, t.Any]:
    """Status, headers and body of a response, as JSON-ready data."""
    body = response.get_data()
    headers = [
        (name, value)
        for name, value in response.headers.items()
        if name.lower() != "content-length"
    ]
    return {
        "status": response.status_code,
        "headers": headers,
        "body": base64.b64encode(body).decode("ascii"),
    }


def decode_response(data: dict[str, t.Any]) -> Response:
    """The response :func:`encode_response` stored, ready to send again."""
    response = current_app.response_class(
        base64.b64decode(data["body"]), status=data["status"], headers=data["headers"]
    )
    return response


def run_accepted_view(captured: CapturedRequest) -> dict[str, t.Any]:
    """The built-in task behind ``@afterward.accepted``: replay the request here."""
    record = current_job.record
    secrets = loads(record.secrets) if record.secrets else {}
    return replay(captured, secrets, record.id)
