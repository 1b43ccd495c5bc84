"""Huey's side of the tier-2 benchmark: SqliteHuey as it ships, and the two tasks.

SqliteHuey's defaults: WAL, and SQLite's own ``synchronous`` (FULL: an fsync per
commit); a dequeue deletes the row (at-most-once). Logging is quiet (``-q``).
"""

from __future__ import annotations

import os

import tier2_common
from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ[tier2_common.DB_ENV])


@huey.task()
def noop() -> None:
    """Does nothing: what is measured is the queue around it."""


@huey.task()
def mark(path: str) -> None:
    """Write when it ran, and the worker's RSS, to ``path``."""
    tier2_common.write_mark(path)
