"""Raw SQLite, the physical reference of the tier-2 benchmark: a queue in ten lines.

One row per job, one statement per transaction (autocommit), WAL, ``synchronous=NORMAL``,
as flask-afterward's store: an INSERT to enqueue; to run a job, a claim
(``UPDATE … RETURNING``) and a DELETE, two commits, like flask-afterward's claim and
complete. No payload decoding, no app, no records: what the disk and SQLite cost.

    python tier2_raw.py worker [--burst]   # run jobs from BENCH_T2_DB until stopped
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import time

import tier2_common

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY, state TEXT NOT NULL DEFAULT 'queued', payload TEXT NOT NULL
)
"""
INSERT = "INSERT INTO queue (payload) VALUES (?)"
CLAIM = """
UPDATE queue SET state = 'running'
WHERE id = (SELECT id FROM queue WHERE state = 'queued' ORDER BY id LIMIT 1)
RETURNING id, payload
"""
DELETE = "DELETE FROM queue WHERE id = ?"
#: a no-op job's payload; a mark's is "mark:" and the file to write
NOOP = '{"args":[],"kwargs":{}}'


def connect(path: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(SCHEMA)
    return db


def run_one(db: sqlite3.Connection) -> bool:
    """Claim one job, run it, delete it; False when none is queued."""
    row = db.execute(CLAIM).fetchone()
    if row is None:
        return False
    job_id, payload = row
    if payload.startswith("mark:"):
        tier2_common.write_mark(payload[5:])
    db.execute(DELETE, (job_id,))
    return True


def cycles(path: str, count: int) -> float:
    """Insert, claim and delete ``count`` jobs one at a time in one process: cycles/s."""
    db = connect(path)
    try:
        started = time.perf_counter()
        for _ in range(count):
            db.execute(INSERT, (NOOP,))
            run_one(db)
        return count / (time.perf_counter() - started)
    finally:
        db.close()


def work(burst: bool) -> None:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    db = connect(os.environ[tier2_common.DB_ENV])
    delay = 0.02
    while not stopping:
        if run_one(db):
            delay = 0.02
        elif burst:
            break
        else:
            time.sleep(delay)  # the same idle back-off as flask-afterward's worker
            delay = min(delay * 2, 0.5)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Raw SQLite queue worker.")
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--burst", action="store_true")
    work(parser.parse_args().burst)


if __name__ == "__main__":
    main()
