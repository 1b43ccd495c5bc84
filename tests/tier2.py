"""Helpers shared by the in-process tier-2 tests (tasks, jobs, workers, eager mode).

Not a conftest: the ``app`` fixtures that use these live in each test module, so that
each module says which stores it runs against.
"""

from __future__ import annotations

import collections.abc as cabc
import threading
import typing as t

from flask import Flask

from flask_afterward import Afterward
from flask_afterward.config import EXTENSION_KEY
from flask_afterward.records import JobRecord
from flask_afterward.stores.base import QueueStore
from flask_afterward.worker import Worker
from flask_afterward.worker import WorkerGroup
from tests import redis_server

#: The stores our own worker pulls from; tier-2 semantics must hold on each (redis
#: only with redis-server installed: see ``tests/redis_server.py``).
_REDIS: t.Final = {"redis": redis_server.URL} if redis_server.AVAILABLE else {}
STORES: t.Final = ("memory://", "sqlite:///afterward.sqlite3", *_REDIS.values())
#: Pytest ids for :data:`STORES`.
STORE_IDS: t.Final = ("memory", "sqlite", *_REDIS)


def store_of(app: Flask) -> QueueStore:
    """The app's job store, as the queue store the worker needs."""
    store = app.extensions[EXTENSION_KEY].store
    assert isinstance(store, QueueStore)
    return store


def claim(
    store: QueueStore, worker: str, queues: cabc.Sequence[str] | None, lease: float
) -> JobRecord | None:
    """Claim the one best runnable job, as a worker's claim of a batch of one does."""
    return next(iter(store.complete_and_claim_many([], worker, queues, lease, 1)[1]), None)


def worker_for(app: Flask, afterward: Afterward, **options: t.Any) -> Worker:
    """A worker on the app's store, to drive by hand with ``run_once``/``run(burst=True)``."""
    return Worker(app, store_of(app), afterward.tasks, **options)


def group_for(app: Flask, afterward: Afterward, **options: t.Any) -> WorkerGroup:
    """A worker group on the app's store; the test starts and closes it."""
    options.setdefault("threads", 1)
    return WorkerGroup(app, store_of(app), afterward.tasks, **options)


def run_burst(app: Flask, afterward: Afterward) -> None:
    """Run every runnable job, then return (rq's ``work(burst=True)``).

    The jobs run on a worker group's own threads, as in production: not in the test's
    thread, so nothing of the test's app or request context leaks into them, and a job
    or signal that needs a context must get it from the worker.
    """
    group = group_for(app, afterward, name="burst-worker")
    group.start(burst=True)
    try:
        assert group.join(timeout=60), "the burst worker did not run out of jobs in 60 s"
    finally:
        group.close(5)


def worker_threads() -> set[threading.Thread]:
    """The live in-process job worker threads (monitors excluded)."""
    return {
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("flask-afterward-worker-")
        and not thread.name.endswith("-monitor")
    }
