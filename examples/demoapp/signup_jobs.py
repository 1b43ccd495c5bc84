"""Sign up, and get a welcome mail that is sent durably: a job, not a callback.

The view stores the user with Flask-SQLAlchemy and calls
``send_welcome_mail.after_response(user.id)``. That stores a job in flask-afterward's
SQLite store *before* the response is sent, in the ``deferred`` state; once the response
has been delivered the job becomes ``queued``, and a worker runs it. If the process dies
in between, the job is still there, and the store releases it after
``AFTERWARD_DEFER_GRACE`` seconds.

The task records in the database that the mail was sent. Jobs run at least once (a
worker killed in the middle means the job runs again), so the task checks that record
first and does nothing the second time.

Addresses containing ``+retry`` fail their first attempt on purpose, to show a retry.
"""

from __future__ import annotations

import datetime
import logging
import time

from flask import Blueprint
from flask import current_app
from flask import flash
from flask import Flask
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from demoapp.extensions import afterward
from flask_afterward import current_job
from flask_afterward import Job
from flask_afterward import progress
from flask_afterward import State
from flask_afterward.errors import JobNotFound


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

bp = Blueprint("signup_jobs", __name__, url_prefix="/jobs", template_folder="templates")

logger = logging.getLogger("demo.signup_jobs")


class User(db.Model):
    __tablename__ = "demo_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)
    signed_up_at: Mapped[datetime.datetime]
    #: the id of the job that sends the welcome mail
    welcome_job_id: Mapped[str | None]
    #: set by the job once the mail is out; a job that runs again sees it
    welcome_sent_at: Mapped[datetime.datetime | None]


def init_app(app: Flask) -> None:
    """Set up Flask-SQLAlchemy on ``app`` and create the table.

    The users live in ``demo.sqlite3`` in the instance folder, next to flask-afterward's
    ``afterward.sqlite3``: two files, so the demo's data and the jobs are separate.
    """
    app.config.setdefault("SQLALCHEMY_DATABASE_URI", "sqlite:///demo.sqlite3")
    db.init_app(app)
    with app.app_context():
        db.create_all()


@afterward.task(name="demo.send_welcome_mail", retries=3, timeout=60)
def send_welcome_mail(user_id: int) -> str:
    """Send the welcome mail to a user, once. Runs in a worker, in an app context.

    It gets the user's id, not the ``User``: job arguments are stored as JSON, and the
    row may have changed by the time the job runs.
    """
    user = db.session.get(User, user_id)
    if user is None:
        # The signup was never committed (the process died before the commit).
        return "no such user"
    if user.welcome_sent_at is not None:
        # An earlier attempt sent it and the job runs again (at-least-once).
        return f"already sent to {user.email}"
    logger.info(
        "sending welcome mail to %s (job %s, attempt %d)",
        user.email,
        current_job.id,
        current_job.attempt,
    )
    if "+retry" in user.email and current_job.attempt == 1:
        raise ConnectionError("the mail server hung up (on purpose, to show a retry)")
    steps = 3
    for step in range(steps):
        # Reports progress, and stops the job here if it was cancelled or timed out.
        progress(step / steps, "talking to the mail server")
        time.sleep(current_app.config["DEMO_MAIL_DELAY"] / steps)
    user.welcome_sent_at = _now()
    db.session.commit()
    logger.info("sent welcome mail to %s", user.email)
    return f"sent to {user.email}"


@bp.get("/")
def index() -> str:
    users = db.session.execute(db.select(User).order_by(User.id.desc()).limit(20)).scalars()
    rows = [(user, _job(user.welcome_job_id)) for user in users]
    is_busy = any(job is not None and job.state in _ACTIVE for _, job in rows)
    return render_template("demo/signup_jobs.html", rows=rows, is_busy=is_busy)


@bp.post("/")
def submit() -> ResponseReturnValue:
    address = request.form.get("email", "").strip()
    error = None
    if "@" not in address.strip("@"):
        error = "That does not look like an email address."
    elif db.session.execute(db.select(User.id).filter_by(email=address)).first():
        error = f"{address} has signed up already."
    if error is not None:
        return render_template("demo/signup_jobs.html", rows=[], error=error), 400
    user = User(email=address, signed_up_at=_now())
    db.session.add(user)
    db.session.flush()  # gives user.id
    # Stored now, runnable once the response is out: by then the commit below is done,
    # so the worker finds the user. With .delay() it could run before the commit.
    job = send_welcome_mail.after_response(user.id)
    user.welcome_job_id = job.id
    # If this raises, the request ends in an error and the deferred job is cancelled.
    db.session.commit()
    logger.info("signup from %s: answering now, job %s sends the mail", address, job.id)
    flash(f"Welcome! Job {job.id} sends a mail to {address}; it survives a restart.")
    return redirect(url_for(".index"), 303)


#: the states of a job that has not finished yet
_ACTIVE = frozenset({State.DEFERRED, State.QUEUED, State.RUNNING})


def _job(job_id: str | None) -> Job[str] | None:
    """The job with this id, or None once it has expired (``AFTERWARD_RESULT_TTL``)."""
    if job_id is None:
        return None
    try:
        return afterward.job(job_id)
    except JobNotFound:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
