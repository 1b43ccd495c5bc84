"""Celery's side of the tier-2 benchmark: Redis broker, results ignored, two tasks."""

from __future__ import annotations

import os

import tier2_common
from celery import Celery

app = Celery("tier2", broker=os.environ[tier2_common.REDIS_ENV])
app.conf.update(
    task_ignore_result=True,
    task_default_queue=tier2_common.QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task
def noop() -> None:
    """Does nothing: what is measured is the queue around it."""


@app.task
def mark(path: str) -> None:
    """Write when it ran, and the worker's RSS, to ``path``."""
    tier2_common.write_mark(path)
