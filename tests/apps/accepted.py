"""An app with ``@afterward.accepted`` views, for unit tests and live-server tests.

``create_app(out, **config)`` builds it for the test client; a WSGI server runs
``tests.apps.accepted:create_server_app()``, which reads its directory from
``ACCEPTED_OUT`` and config keys from ``ACCEPTED_AFTERWARD_*`` (JSON-parsed, as
Flask's ``from_prefixed_env`` reads them). The server app also mounts, under
``/mounted``, a second app whose jobs API is guarded by ``AFTERWARD_AUTHORIZE``.

``python -m tests.apps.accepted waitress FD THREADS`` serves it with waitress on a socket
the parent is listening on (gunicorn takes ``--bind fd://FD`` itself).
"""

from __future__ import annotations

import asyncio
import io
import os
import pathlib
import socket
import sys
import time
import typing as t

from flask import abort
from flask import Blueprint
from flask import Flask
from flask import g
from flask import jsonify
from flask import request
from flask import Response
from flask import send_file
from flask import session
from flask_login import current_user
from flask_login import login_required
from flask_login import login_user
from flask_login import LoginManager
from flask_login import UserMixin
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_afterward import Afterward
from flask_afterward import current_job
from flask_afterward import progress
from flask_afterward.jobs import Job

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

#: The bearer token the ``/api/v1`` blueprint's ``before_request`` hook accepts.
API_TOKEN = "Bearer s3cret-token"
#: Users Flask-Login knows.
USERS = frozenset({"ada", "grace"})
#: Header that makes the mounted app's AFTERWARD_AUTHORIZE say yes.
ROLE_HEADER = "X-Role"
#: The file ``/report.pdf`` sends.
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4

afterward = Afterward()
login_manager = LoginManager()


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return User(user_id) if user_id in USERS else None


@afterward.task(name="tests.apps.accepted.parked")
def parked() -> str:
    return "parked"


@afterward.task(name="tests.apps.accepted.gone")
def gone() -> None:
    """A plain task failing with an HTTPException: its code is kept."""
    abort(410)


class NotFound(Exception):
    """An app's own exception that merely shares a name with Werkzeug's."""


@afterward.task(name="tests.apps.accepted.lookalike")
def lookalike() -> None:
    raise NotFound("an app error, not an HTTP status")


def create_app(out: pathlib.Path, **config: object) -> Flask:
    """The app, its state in ``out``; ``config`` overrides any setting."""
    app = Flask(__name__, instance_path=str(out / "instance"))
    app.config.update(SECRET_KEY="accepted-tests", AFTERWARD_STORE="sqlite:///afterward.sqlite3")
    app.config.from_prefixed_env("ACCEPTED")
    app.config.update(config)
    afterward.init_app(app)
    login_manager.init_app(app)
    app.register_blueprint(main)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(catch_all, url_prefix="/catch-all")
    return app


def create_server_app() -> WSGIApplication:
    """What the WSGI servers run: the app, and under ``/mounted`` a guarded one."""
    out = pathlib.Path(os.environ["ACCEPTED_OUT"])
    app = create_app(out)
    guarded = create_app(out / "mounted", AFTERWARD_AUTHORIZE=authorize_by_role)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/mounted": guarded.wsgi_app}
    )
    return app


def authorize_by_role(job: Job[t.Any], action: str) -> bool:
    """Only clients sending ``X-Role: admin`` may read jobs; ``X-Role: reader`` may
    read but not cancel."""
    role = request.headers.get(ROLE_HEADER)
    return role == "admin" or (role == "reader" and action == "read")


main = Blueprint("main", __name__)


@main.before_request
def check_form_token() -> None:
    """A CSRF-style check: it parses the form before the view runs."""
    if request.endpoint == "main.form" and request.form.get("csrf") != session.get("csrf"):
        abort(400, "bad CSRF token")


@main.get("/ready")
def ready() -> str:
    return "ready\n"


@main.post("/session")
def start_session() -> dict[str, str]:
    session["csrf"] = request.form["csrf"]
    return {"csrf": session["csrf"]}


@main.post("/login")
def login() -> str:
    user = load_user(request.form["username"])
    if user is None:
        abort(403)
    login_user(user)
    session.permanent = bool(request.form.get("permanent"))  # refreshed on every request
    return "logged in\n"


@main.route("/slow", methods=["POST", "PUT"])
@afterward.accepted
def slow() -> Response:
    """Sleeps ``?seconds=`` (default 2), then answers 201 with what it saw."""
    time.sleep(request.args.get("seconds", 2.0, type=float))
    response = jsonify(
        method=request.method,
        json=request.get_json(silent=True),
        args=request.args.to_dict(flat=False),
        remote_addr=request.remote_addr,
        job=current_job.id,
    )
    response.status_code = 201
    response.headers["X-Report"] = "ready"
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie("report", "built")
    return response


@main.post("/missing")
@afterward.accepted
def missing() -> str:
    abort(404, "no such report")


@main.post("/boom")
@afterward.accepted
def boom() -> str:
    raise RuntimeError("the report exploded")


@main.post("/steps")
@afterward.accepted(queue="steps", timeout=60)
def steps() -> dict[str, int]:
    """Reports ``?steps=`` progress steps, ``?pause=`` seconds apart; ``?fail=1``
    then raises."""
    done = _run_steps()
    if request.args.get("fail"):
        raise RuntimeError("failed after its steps")
    return done


@main.post("/short-lived")
@afterward.accepted(result_ttl=1)
def short_lived() -> str:
    return "short-lived\n"


@main.post("/parked")
def park() -> Response:
    """Enqueues a job that may not run for a minute: it stays queued."""
    job = parked.options(delay=60).delay()
    response: Response = afterward.accepted_response(job)
    return response


@main.post("/report.pdf")
@afterward.accepted
def report_pdf() -> Response:
    """A file answer: send_file streams it in passthrough mode."""
    return send_file(io.BytesIO(PDF), mimetype="application/pdf", download_name="report.pdf")


@main.post("/form")
@afterward.accepted
def form() -> dict[str, t.Any]:
    files = {name: storage.read().decode() for name, storage in request.files.items()}
    return {"form": request.form.to_dict(flat=False), "files": files}


@main.post("/me")
@login_required
@afterward.accepted
def me() -> dict[str, t.Any]:
    return {"user": current_user.id, "in_job": bool(current_job)}


@main.post("/flaky")
@login_required
@afterward.accepted(retries=1)
def flaky() -> dict[str, t.Any]:
    """Fails its first attempt; the retry replays the request, credentials and all."""
    if current_job.attempt == 1:
        raise ConnectionError("the first attempt fails")
    return {"user": current_user.id, "attempt": current_job.attempt}


@main.post("/async")
@afterward.accepted
async def async_view() -> dict[str, t.Any]:
    await asyncio.sleep(0.01)
    return {"async": True, "path": request.path}


api = Blueprint("api", __name__)


@api.before_request
def authenticate() -> None:
    if request.headers.get("Authorization") != API_TOKEN:
        abort(401)
    g.client = "api-client"


@api.post("/items/<int:item_id>")
@afterward.accepted
def item(item_id: int) -> dict[str, t.Any]:
    return {"item": item_id, "client": g.client, "path": request.path, "url": request.url}


catch_all = Blueprint("catch_all", __name__)


@catch_all.errorhandler(Exception)
def any_error(error: Exception) -> tuple[dict[str, str], int]:
    """A JSON API's catch-all handler: it must not swallow a cancel."""
    return {"error": type(error).__name__}, 500


@catch_all.post("/steps")
@afterward.accepted
def catch_all_steps() -> dict[str, int]:
    return _run_steps()


def _run_steps() -> dict[str, int]:
    count = request.args.get("steps", 10, type=int)
    pause = request.args.get("pause", 0.05, type=float)
    for step in range(1, count + 1):
        time.sleep(pause)  # the "work" of one step
        progress(step / count, f"step {step} of {count}")
    return {"steps": count}


def main_waitress(fd: int, threads: int) -> None:
    import waitress

    waitress.serve(create_server_app(), sockets=[socket.socket(fileno=fd)], threads=threads)


if __name__ == "__main__":
    if sys.argv[1] != "waitress":
        raise SystemExit(f"unknown server {sys.argv[1]!r}")
    main_waitress(int(sys.argv[2]), int(sys.argv[3]))
