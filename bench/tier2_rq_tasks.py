"""RQ's side of the tier-2 benchmark: the two functions its jobs call, by import path."""

from __future__ import annotations

import tier2_common


def noop() -> None:
    """Does nothing: what is measured is the queue around it."""


def mark(path: str) -> None:
    """Write when it ran, and the worker's RSS, to ``path``."""
    tier2_common.write_mark(path)
