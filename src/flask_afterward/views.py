"""The jobs HTTP API (a blueprint) and the ``202 Accepted`` responses that point to it.

Who may read or cancel a job: by default only the client that created it, which holds
the job's *capability*, an HMAC of the job id under the app's ``SECRET_KEY`` carried as
``?key=`` in the status and result URLs the 202 response returns. A request without
it gets 404, the same answer as for an id that does not exist, so ids cannot be probed.
With ``AFTERWARD_AUTHORIZE = callable(job, action)`` the app decides instead
(``action`` is ``"read"`` or ``"cancel"``), and a refusal is a 403.
"""

from __future__ import annotations

import base64
import collections.abc as cabc
import functools
import hashlib
import hmac
import importlib.resources
import json
import re
import time
import typing as t

from flask import abort
from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import request
from flask import Response
from flask import url_for

from . import serializers
from .config import Action
from .errors import ConfigurationError
from .errors import SerializationError
from .jobs import Job
from .records import error_summary
from .records import JobRecord
from .records import State
from .records import TERMINAL
from .replay import capture_request
from .replay import decode_response
from .replay import REPLAY_KEY
from .state import get_state

if t.TYPE_CHECKING:
    from .state import AppState
    from .tasks import Task

ViewFunction = t.TypeVar("ViewFunction", bound=cabc.Callable[..., t.Any])

#: The name of the built-in task that runs ``@afterward.accepted`` views.
ACCEPTED_TASK: t.Final = "flask_afterward.accepted"
#: Seconds a client is told to wait between polls.
RETRY_AFTER: t.Final = 1
#: Longest an event stream stays open; the client reconnects (EventSource does).
EVENTS_MAX_SECONDS: t.Final = 60.0
_EVENTS_POLL: t.Final = 0.2
#: Seconds of silence after which a stream writes a comment (see ``_event_stream``).
_EVENTS_HEARTBEAT: t.Final = 1.0
_ID_PATTERN: t.Final = re.compile(r"[A-Za-z0-9_-]{22}")


def capability(job_id: str) -> str:
    """The key that lets its holder read and cancel this job (see the module docs)."""
    digest = hmac.new(_signing_key(), b"flask-afterward job " + job_id.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()[:16]).rstrip(b"=").decode()


def _signing_key() -> bytes:
    secret = current_app.secret_key
    if not secret:
        raise ConfigurationError(
            "The jobs API signs job URLs with the app's SECRET_KEY, which is not set. "
            "Set SECRET_KEY, or decide access yourself with AFTERWARD_AUTHORIZE."
        )
    return secret.encode() if isinstance(secret, str) else secret


def check_job_urls() -> None:
    """Raise :class:`ConfigurationError` now if :func:`job_urls` would: call it before
    enqueuing, so that a misconfigured app stores no job its client cannot follow."""
    if get_state().settings.authorize is None:
        _signing_key()


def job_urls(job_id: str) -> dict[str, str]:
    """``status_url``, ``result_url`` and ``events_url`` of a job, with its key if needed."""
    params: dict[str, t.Any] = {}
    if get_state().settings.authorize is None:
        params["key"] = capability(job_id)
    return {
        "status_url": url_for("afterward.job_status", job_id=job_id, **params),
        "result_url": url_for("afterward.job_result", job_id=job_id, **params),
        "events_url": url_for("afterward.job_events", job_id=job_id, **params),
    }


def accepted_response(job: Job[t.Any]) -> Response:
    """``202 Accepted`` for ``job``: ``Location`` is its status URL; ``Retry-After`` set.

    Return it from a view that enqueued a job itself, to hand the client the same
    follow-up API as an ``@afterward.accepted`` view.
    """
    urls = job_urls(job.id)
    body = {"id": job.id, "state": str(job.state), **urls}
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = urls["status_url"]
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def accept_view(view: ViewFunction, task: Task[..., t.Any]) -> ViewFunction:
    """``view``, made an accepted view whose requests ``task`` replays in a worker.

    In the request: refuse a body over ``AFTERWARD_MAX_PAYLOAD`` (413), store the
    captured request as a job and answer :func:`accepted_response`. In the worker's
    replay (:data:`~flask_afterward.replay.REPLAY_KEY` in the environ): run the view.
    """

    @functools.wraps(view)
    def accept(*args: t.Any, **kwargs: t.Any) -> t.Any:
        if REPLAY_KEY in request.environ:  # in the worker: run the view itself
            return current_app.ensure_sync(view)(*args, **kwargs)
        limit = get_state().settings.max_payload
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


def make_blueprint() -> Blueprint:
    """A fresh blueprint per app registration (no module-level state)."""
    blueprint = Blueprint("afterward", __name__)
    blueprint.add_url_rule("/jobs/<job_id>", view_func=job_status, methods=["GET"])
    blueprint.add_url_rule("/jobs/<job_id>", view_func=job_cancel, methods=["DELETE"])
    blueprint.add_url_rule("/jobs/<job_id>/result", view_func=job_result, methods=["GET"])
    blueprint.add_url_rule("/jobs/<job_id>/events", view_func=job_events, methods=["GET"])
    blueprint.add_url_rule("/openapi.json", view_func=openapi, methods=["GET"])
    return blueprint


def _problem(status: int, title: str, detail: str, **extra: object) -> Response:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    response = current_app.response_class(
        json.dumps(body), status=status, mimetype="application/problem+json"
    )
    return response


def _not_found(job_id: str) -> Response:
    return _problem(404, "Job not found", f"No job {job_id!r}: unknown, expired, or not yours.")


def _authorized(job_id: str, action: Action) -> JobRecord | Response:
    """The job if this request may ``action`` it, else the response to send instead."""
    if not _ID_PATTERN.fullmatch(job_id):
        return _not_found(job_id)
    state = get_state()
    authorize = state.settings.authorize
    if authorize is None:
        key = request.args.get("key", "")
        if not hmac.compare_digest(key.encode(), capability(job_id).encode()):
            return _not_found(job_id)
    record = state.get(job_id)
    if record is None:
        return _not_found(job_id)
    if authorize is not None and not authorize(Job(record, state), action):
        return _problem(403, "Forbidden", f"You may not {action} job {job_id!r}.")
    return record


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + (
        f".{int(timestamp % 1 * 1e6):06d}Z"
    )


def describe(record: JobRecord) -> dict[str, t.Any]:
    """The JSON status of a job (the traceback only when the app is in debug mode)."""
    urls = job_urls(record.id)
    return {
        **_fields(record, debug=current_app.debug),
        "result_url": urls["result_url"],
        "events_url": urls["events_url"],
    }


def _fields(record: JobRecord, *, debug: bool) -> dict[str, t.Any]:
    """What :func:`describe` says of a job, but its URLs (which need the request)."""
    error: dict[str, str | None] | None = None
    summary = error_summary(record.error)
    if summary is not None:
        error = {"type": summary[0], "message": summary[1]}
        if debug:
            error["traceback"] = record.error
    return {
        "id": record.id,
        "task": record.task,
        "state": str(record.state),
        "progress": record.progress,
        "message": record.message,
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "error": error,
    }


def job_status(job_id: str) -> Response:
    """``GET /jobs/<id>``: the job's status."""
    found = _authorized(job_id, "read")
    if isinstance(found, Response):
        return found
    return jsonify(describe(found))


def job_cancel(job_id: str) -> Response:
    """``DELETE /jobs/<id>``: cancel (queued: at once; running: at its next progress)."""
    found = _authorized(job_id, "cancel")
    if isinstance(found, Response):
        return found
    state = get_state()
    if not state.cancel(job_id):
        return _problem(409, "Job already finished", f"Job {job_id} is {found.state}.")
    record = state.get(job_id) or found
    response = jsonify(describe(record))
    response.status_code = 202 if record.state == State.RUNNING else 200
    return response


def job_result(job_id: str) -> Response:
    """``GET /jobs/<id>/result``: 202 until finished, then the result or a problem."""
    found = _authorized(job_id, "read")
    if isinstance(found, Response):
        return found
    record = found
    if record.state == State.SUCCEEDED:
        value = serializers.loads(record.result or "null")
        if record.task == ACCEPTED_TASK:
            return decode_response(value)
        return jsonify({"id": record.id, "result": value})
    if record.state == State.FAILED:
        summary = error_summary(record.error) or ("Error", "")
        status = _status_of(summary[0])
        return _problem(status, "Job failed", f"{summary[0]}: {summary[1]}", id=record.id)
    if record.state == State.CANCELLED:
        return _problem(409, "Job cancelled", f"Job {record.id} was cancelled.", id=record.id)
    response = jsonify(describe(record))
    response.status_code = 202
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def _status_of(error_type: str) -> int:
    """An HTTPException keeps its code (a task may ``abort(404)``); anything else is 500.

    Only Werkzeug's own exceptions are recognised: an app's ``NotFound`` that is not
    an HTTPException is a 500, and the stored error text is never imported.
    """
    from werkzeug import exceptions

    module, _, name = error_type.rpartition(".")
    if module != exceptions.__name__:
        return 500
    kind = getattr(exceptions, name, None)
    code = getattr(kind, "code", None)
    return code if isinstance(code, int) and 400 <= code < 600 else 500


def job_events(job_id: str) -> Response:
    """``GET /jobs/<id>/events``: Server-Sent Events of state and progress changes.

    One ``update`` event per change, the last when the job finishes; the stream then
    ends. It never stays open longer than ``EVENTS_MAX_SECONDS``; EventSource
    reconnects on its own. While nothing changes, a comment line is written every
    ``_EVENTS_HEARTBEAT`` seconds, so a server notices a client that left and frees its
    thread (gunicorn gthread and waitress have only a few).
    """
    found = _authorized(job_id, "read")
    if isinstance(found, Response):
        return found
    first = describe(found)
    events = _event_stream(get_state(), found, first, debug=current_app.debug)
    response = current_app.response_class(events, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


def _event_stream(
    engine: AppState, record: JobRecord, first: dict[str, t.Any], *, debug: bool
) -> cabc.Iterator[str]:
    # ``first`` is built in the request, because url_for needs the request context;
    # later events take its URLs and describe the job anew.
    deadline = time.monotonic() + EVENTS_MAX_SECONDS
    seen = None
    yield "retry: 1000\n\n"
    quiet_since = time.monotonic()
    while True:
        current = (record.state, record.progress, record.message, record.attempts)
        if current != seen:
            seen = current
            status = {**first, **_fields(record, debug=debug)}
            yield f"event: update\ndata: {json.dumps(status)}\n\n"
            quiet_since = time.monotonic()
        if record.state in TERMINAL or time.monotonic() >= deadline:
            return
        time.sleep(_EVENTS_POLL)
        if time.monotonic() - quiet_since >= _EVENTS_HEARTBEAT:
            # A comment, which EventSource ignores. Writing it is how the server
            # learns that a client left: its thread is freed, not held to the deadline.
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        latest = engine.get(record.id)
        if latest is None:
            yield "event: gone\ndata: {}\n\n"
            return
        record = latest


def openapi() -> Response:
    """``GET /openapi.json``: the OpenAPI 3.1 description of this API."""
    text = importlib.resources.files(__package__).joinpath("openapi.json").read_text()
    spec = json.loads(text)
    prefix = get_state().settings.url_prefix
    spec["servers"] = [{"url": request.script_root + prefix}]
    return jsonify(spec)
