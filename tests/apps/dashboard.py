"""An app with the dashboard on and a few tasks, for the dashboard's tests.

``create_app(**config)`` builds it; the browser tests serve it with :func:`main` (a
real server, with worker threads), with or without a hook that lets in the users the
``X-Test-User`` header names (:func:`_users`).
"""

from __future__ import annotations

import pathlib
import sys
import time
import typing as t

from flask import Flask
from flask import request

from flask_afterward import Afterward
from flask_afterward import progress

afterward = Afterward()

#: The file in the instance folder whose existence makes ``flaky`` succeed.
FIXED_MARK: t.Final = "fixed"


@afterward.task
def add(a: int, b: int) -> int:
    return a + b


@afterward.task(queue="mail")
def send_mail(to: str, subject: str) -> str:
    return f"sent {subject!r} to {to}"


@afterward.task
def slow(seconds: float) -> str:
    """Reports progress while it runs, so a live page has something to show."""
    steps = 10
    for step in range(steps):
        time.sleep(seconds / steps)
        progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return "done"


@afterward.task
def flaky(path: str) -> str:
    """Fails until the file ``path`` exists: a failure an operator can fix and retry."""
    if not pathlib.Path(path).exists():
        raise RuntimeError(f"the file {path} is missing")
    return "fixed"


def create_app(instance: pathlib.Path, **config: t.Any) -> Flask:
    app = Flask(__name__, instance_path=str(instance))
    app.config.update(
        {
            "SECRET_KEY": "dashboard-tests",
            "AFTERWARD_DASHBOARD": True,
            "AFTERWARD_STORE": f"sqlite:///{instance / 'jobs.sqlite3'}",
            **config,
        }
    )
    afterward.init_app(app)

    @app.post("/submit/<kind>")
    def submit(kind: str) -> dict[str, t.Any]:
        count = int(request.form.get("count", 1))
        ids = []
        for number in range(count):
            if kind == "slow":
                job = slow.delay(float(request.form.get("seconds", 2)))
            elif kind == "flaky":
                job = flaky.delay(str(instance / FIXED_MARK))
            elif kind == "later":
                job = send_mail.options(delay=3600).delay(f"user{number}@example.org", "later")
            else:
                job = add.delay(number, 1)
            ids.append(job.id)
        return {"ids": ids}

    return app


def _users(action: str) -> bool:
    """The browser tests' hook: ``X-Test-User: reader`` may read, ``admin`` anything."""
    user = request.headers.get("X-Test-User", "")
    return user == "admin" or (user == "reader" and action == "read")


def main(argv: list[str]) -> None:
    """``python -m tests.apps.dashboard FD FOLDER [hook]``: serve on the listening socket
    ``FD`` (the parent bound it, so there is no race for a port) with worker threads."""
    from werkzeug.serving import make_server

    fd, folder = int(argv[0]), pathlib.Path(argv[1])
    hooked = len(argv) > 2 and argv[2] == "hook"
    served = create_app(
        folder,
        AFTERWARD_WORKERS=2,
        **({"AFTERWARD_DASHBOARD_AUTHORIZE": _users} if hooked else {}),
    )
    server = make_server("127.0.0.1", 0, served, threaded=True, fd=fd)
    print("serving", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
