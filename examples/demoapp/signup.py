"""Sign up with an email address: answered at once, welcome mail sent afterwards.

The view answers with a redirect right away. The welcome mail, which takes
``DEMO_MAIL_DELAY`` seconds to "send", runs after the response has been delivered,
on flask-afterward's callback pool, with the request's context still readable.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time

from flask import Blueprint
from flask import current_app
from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue

from flask_afterward import after_this_response

bp = Blueprint("signup", __name__, template_folder="templates")

logger = logging.getLogger("demo.signup")


@dataclasses.dataclass(frozen=True, slots=True)
class Mail:
    """A mail the demo pretended to send."""

    to: str
    subject: str
    sent_at: datetime.datetime


def outbox() -> list[Mail]:
    """The mails sent so far by the current app, oldest first."""
    mails: list[Mail] = current_app.extensions.setdefault("demo_outbox", [])
    return mails


@bp.get("/")
def index() -> str:
    return render_template("demo/signup.html", outbox=outbox())


@bp.post("/")
def submit() -> ResponseReturnValue:
    address = request.form.get("email", "").strip()
    if "@" not in address.strip("@"):
        message = "That does not look like an email address."
        return render_template("demo/signup.html", outbox=outbox(), error=message), 400
    # g is copied into the callback, so it can tell how long after the answer it ran.
    g.answered_at = time.perf_counter()
    after_this_response(send_welcome_mail, address)
    logger.info("signup from %s: answering now, the welcome mail is sent afterwards", address)
    flash(f"Welcome! A mail to {address} is on its way.")
    return redirect(url_for(".index"), 303)


def send_welcome_mail(address: str) -> None:
    """Slow work: pretend to talk to a mail server for ``DEMO_MAIL_DELAY`` seconds."""
    logger.info(
        "sending welcome mail to %s (started %.1f ms after the view answered %s %s)",
        address,
        _since_answer() * 1000,
        request.method,
        request.path,
    )
    time.sleep(current_app.config["DEMO_MAIL_DELAY"])
    mail = Mail(address, "Welcome!", datetime.datetime.now(datetime.UTC))
    outbox().append(mail)
    logger.info(
        "sent welcome mail to %s (finished %.2f s after the view answered)",
        address,
        _since_answer(),
    )


def _since_answer() -> float:
    answered_at: float = g.answered_at
    return time.perf_counter() - answered_at
