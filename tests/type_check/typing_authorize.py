"""Read by mypy only (strict, warn_unused_ignores): what ``AFTERWARD_AUTHORIZE`` is given.

A ``# type: ignore[code]`` here is an assertion that mypy reports that error: if
``Authorize`` loosens back to ``Any`` and ``str``, the ignore becomes unused and mypy
fails.
"""

from __future__ import annotations

import typing as t

from flask_afterward import Job
from flask_afterward.config import Action
from flask_afterward.config import Authorize
from flask_afterward.config import Settings


def by_action(job: Job[t.Any], action: Action) -> bool:
    t.assert_type(job.id, str)
    return action == "read"


def by_text(job: Job[t.Any], action: str) -> bool:  # a wider action fits too
    return action in {"read", "cancel"}


def by_number(job: Job[t.Any], action: int) -> bool:
    return action > 0


def by_record(job: str, action: Action) -> bool:
    return bool(job)


def check_authorize() -> None:
    hooks: list[Authorize] = [by_action, by_text]
    Settings(store="memory://", authorize=by_action)
    Settings(store="memory://", authorize=by_number)  # type: ignore[arg-type]
    Settings(store="memory://", authorize=by_record)  # type: ignore[arg-type]
    for hook in hooks:
        hook(t.cast(Job[t.Any], None), "cancel")
        hook(t.cast(Job[t.Any], None), "delete")  # type: ignore[arg-type]
