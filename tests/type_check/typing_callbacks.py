"""Read by mypy only: ``after_this_response`` ties the arguments to the function."""

from __future__ import annotations

import typing as t

from flask import Flask

from flask_afterward import after_this_response
from flask_afterward import Afterward
from flask_afterward import ResponseInfo

app = Flask(__name__)
afterward = Afterward(app)


def send_mail(to: int, subject: str = "", *, b: str = "") -> None: ...


async def notify(user_id: int) -> None: ...


def returns_something(x: int) -> str:
    return str(x)


@app.get("/")
def index() -> str:
    after_this_response(send_mail, 1, b="x")
    after_this_response(send_mail, 1, "subject")
    after_this_response(notify, 7)
    after_this_response(returns_something, 3)  # the return value is ignored
    t.assert_type(after_this_response(send_mail, 1), None)

    after_this_response(send_mail, "bad")  # type: ignore[arg-type]
    after_this_response(send_mail, 1, c="x")  # type: ignore[call-arg]
    after_this_response(send_mail)  # type: ignore[call-arg]
    after_this_response(notify, "7")  # type: ignore[arg-type]
    return "ok"


@afterward.after_response
def audit(info: ResponseInfo) -> None:
    t.assert_type(info.status_code, int | None)
    t.assert_type(info.endpoint, str | None)
    t.assert_type(info.duration, float)


hook: t.Callable[[ResponseInfo], None] = audit  # the decorator returns the function


@afterward.after_response  # type: ignore[type-var]
def wrong_hook(info: int) -> None: ...
