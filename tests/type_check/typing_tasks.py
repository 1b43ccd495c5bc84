"""Read by mypy only (strict, warn_unused_ignores): the ParamSpec signatures of tasks.

A ``# type: ignore[code]`` here is an assertion that mypy reports that error: if the
signatures loosen, the ignore becomes unused and mypy fails.
"""

from __future__ import annotations

import typing as t

from flask_afterward import Afterward
from flask_afterward import Job

afterward = Afterward()


@afterward.task
def send_mail(to: str, subject: str = "") -> None: ...


@afterward.task(retries=3, queue="math")
def add(a: int, b: int) -> int:
    return a + b


def check_delay() -> None:
    job = send_mail.delay("a@b", subject="hi")
    t.assert_type(job, Job[None])
    send_mail.delay(1)  # type: ignore[arg-type]
    send_mail.delay("a@b", subjet="hi")  # type: ignore[call-arg]
    send_mail.delay()  # type: ignore[call-arg]


def check_after_response_and_options() -> None:
    t.assert_type(send_mail.after_response("a@b"), Job[None])
    send_mail.after_response(1)  # type: ignore[arg-type]
    urgent = add.options(priority=5, delay=30, unique="add:1", retries=0, timeout=1.5)
    t.assert_type(urgent.delay(1, 2), Job[int])
    urgent.delay(1, "2")  # type: ignore[arg-type]


def check_results() -> None:
    total: int = add.delay(1, 2).result()
    t.assert_type(add.delay(1, 2).result(timeout=5), int)
    name: str = add.delay(1, 2).result()  # type: ignore[assignment]
    t.assert_type(add(1, 2), int)
    print(total, name)
