"""Where the sqlite store's time goes, and what batching would buy: in-process variants.

    .venv/bin/python bench/tier2_store_variants.py [N] [ROUNDS]

Not part of ``make bench``: evidence for store changes, measured side by side. Each
variant gets a fresh file, N jobs enqueued through ``SqliteStore.enqueue`` (timed) and
drained with ``claim`` + ``complete`` (timed), in one thread, no worker or app around
them, so the numbers are the store's own cost. Prints jobs/s (wall) and CPU µs per job
(``time.process_time``: what the store costs when it has a core to itself).

Variants: the store as it is, at NORMAL and FULL; ``wal_autocheckpoint`` raised to
10,000 pages; automatic checkpoints off and a second thread (own connection) running
``PRAGMA wal_checkpoint(PASSIVE)`` every 0.1 s; without the per-queue runnable index
(what one index costs each enqueue and claim); claims of up to ``BATCH`` jobs per
transaction, each recording the previous batch's successes (what a worker running quick
jobs commits), at NORMAL and FULL.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import os
import pathlib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.records import State
from flask_afterward.stores.sqlite import SqliteStore

BATCH = 32
Drain = cabc.Callable[[SqliteStore], int]


def records(count: int) -> list[JobRecord]:
    now = time.time()
    return [
        JobRecord(
            id=new_job_id(),
            task="tier2_afterward_app.noop",
            payload='{"args":[],"kwargs":{}}',
            state=State.QUEUED,
            created_at=now,
            run_at=now,
        )
        for _ in range(count)
    ]


def one_by_one(store: SqliteStore) -> int:
    done = 0
    while records := store.complete_and_claim_many([], "w", None, 30.0, 1)[1]:
        record = records[0]
        store.complete(record.id, "w", "null")
        done += 1
    return done


def batched(store: SqliteStore) -> int:
    """Claim up to BATCH jobs per transaction, recording the previous batch's successes
    in it (``complete_and_claim_many``, as a worker running quick jobs does)."""
    previous: list[tuple[str, str | None]] = []
    done = 0
    while True:
        _, claimed = store.complete_and_claim_many(previous, "w", None, 30.0, BATCH)
        if not claimed:
            return done
        previous = [(record.id, "null") for record in claimed]
        done += len(claimed)


@contextlib.contextmanager
def checkpointer(path: pathlib.Path, is_on: bool) -> cabc.Iterator[None]:
    """With ``is_on``, a thread checkpoints the WAL every 0.1 s on its own connection."""
    stop = threading.Event()

    def run() -> None:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        while not stop.wait(0.1):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        db.close()

    thread = threading.Thread(target=run, daemon=True)
    if is_on:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if is_on:
            thread.join()


def measure(path: pathlib.Path, count: int, variant: dict[str, object]) -> tuple[float, ...]:
    """(enqueue/s, enqueue CPU µs/job, drain/s, drain CPU µs/job) for one variant."""
    store = SqliteStore(str(path), synchronous=str(variant.get("synchronous", "NORMAL")))
    is_background = bool(variant.get("background"))
    try:
        if "autocheckpoint" in variant:
            store._db.execute(f"PRAGMA wal_autocheckpoint={variant['autocheckpoint']}")
        if is_background:
            store._db.execute("PRAGMA wal_autocheckpoint=0")
        if variant.get("no_queue_index"):
            store._db.execute("DROP INDEX afterward_jobs_runnable_by_queue")
        jobs = records(count)
        drain: Drain = batched if variant.get("batched") else one_by_one
        with checkpointer(path, is_background):
            wall, cpu = time.perf_counter(), time.process_time()
            for record in jobs:
                store.enqueue(record)
            enqueue = (time.perf_counter() - wall, time.process_time() - cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            if drain(store) != count:
                raise RuntimeError("not every job was claimed")
            drained = (time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        store.close()
    return (
        count / enqueue[0],
        enqueue[1] / count * 1e6,
        count / drained[0],
        drained[1] / count * 1e6,
    )


VARIANTS: dict[str, dict[str, object]] = {
    "store as is, NORMAL": {},
    "wal_autocheckpoint=10000, NORMAL": {"autocheckpoint": 10000},
    "checkpoints in a background thread, NORMAL": {"background": True},
    "without the per-queue runnable index, NORMAL": {"no_queue_index": True},
    f"claims/completions {BATCH} per commit, NORMAL": {"batched": True},
    "store as is, FULL": {"synchronous": "FULL"},
    f"claims/completions {BATCH} per commit, FULL": {"batched": True, "synchronous": "FULL"},
}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="flask-afterward-variants-") as folder:
        for number in range(rounds):
            for name, variant in VARIANTS.items():
                path = pathlib.Path(folder) / f"{number}-{len(results[name])}-{os.getpid()}.db"
                results[name].append(measure(path, count, variant))
    print(f"N = {count}, {rounds} rounds, medians; load average {os.getloadavg()[0]:.2f}")
    print("| variant | enqueue/s | enqueue CPU µs/job | drain/s | drain CPU µs/job |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        cells = [statistics.median(column) for column in zip(*values, strict=True)]
        print(f"| {name} | {cells[0]:,.0f} | {cells[1]:.0f} | {cells[2]:,.0f} | {cells[3]:.0f} |")


if __name__ == "__main__":
    main()
