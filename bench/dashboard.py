"""The dashboard on a big store: server time of its pages with 200,000 jobs in sqlite.

    .venv/bin/python bench/run.py dashboard
    BENCH_DASHBOARD_JOBS=20000 .venv/bin/python bench/dashboard.py    # print only

A sqlite store is filled with ``BENCH_DASHBOARD_JOBS`` jobs in mixed states, spread
over four queues, six tasks and the last 24 hours, then searched-indexed and rolled up
as a worker group's supervisor would. Each page is requested ``ROUNDS`` times through
the Flask test client (in-process: the time is the app's, rendering included, without
a network); the table gives the median and the slowest. Then the one per-job cost the
dashboard adds to the job path, the ``afterward_jobs_finished`` index, is measured: the
drain rate of one worker loop with the index and with it dropped.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import sqlite3
import statistics
import tempfile
import threading
import time
import typing as t

import harness
from flask import Flask
from harness import Benchmark

from flask_afterward import Afterward
from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.records import State
from flask_afterward.stores import sqlite as sqlite_store
from flask_afterward.stores.base import JobFilter
from flask_afterward.stores.sqlite import SqliteStore

JOBS = int(os.environ.get("BENCH_DASHBOARD_JOBS", "200000"))
ROUNDS = int(os.environ.get("BENCH_DASHBOARD_ROUNDS", "15"))
DRAIN_JOBS = int(os.environ.get("BENCH_DASHBOARD_DRAIN", "20000"))
DRAIN_ROUNDS = int(os.environ.get("BENCH_DASHBOARD_DRAIN_ROUNDS", "6"))
TARGET_MS = 100.0
#: share of each state among the jobs
MIX: t.Final = {
    State.SUCCEEDED: 0.72,
    State.FAILED: 0.08,
    State.CANCELLED: 0.04,
    State.QUEUED: 0.12,
    State.DEFERRED: 0.01,
    State.RUNNING: 0.01,
}
SCHEDULED_SHARE: t.Final = 0.25  # of the queued: run_at ahead
QUEUES: t.Final = ("default", "mail", "reports", "webhooks")
TASKS: t.Final = (
    "shop.send_mail",
    "shop.build_report",
    "shop.resize_image",
    "shop.sync_crm",
    "shop.charge",
    "shop.notify",
)


def fill(store: SqliteStore, count: int) -> None:
    """``count`` jobs in one transaction (the fast way in; the store's own INSERT)."""
    rng = random.Random(9)
    now = time.time()
    states = list(MIX)
    weights = [MIX[state] for state in states]
    rows = []
    for number in range(count):
        state = rng.choices(states, weights)[0]
        created = now - 86400 * (1 - number / count)
        queue, task = rng.choice(QUEUES), rng.choice(TASKS)
        payload = json.dumps({"args": [f"user{rng.randrange(50000)}@example.org", number]})
        values: dict[str, t.Any] = {"created_at": created, "run_at": created}
        if state in (State.SUCCEEDED, State.FAILED, State.CANCELLED, State.RUNNING):
            values["started_at"] = created + rng.random()
            values["attempts"] = 1
        if state in (State.SUCCEEDED, State.FAILED, State.CANCELLED):
            values["finished_at"] = values["started_at"] + rng.expovariate(20)
            values["result_ttl"] = 7 * 86400.0
        if state == State.FAILED:
            values["error"] = "ValueError: card declined\nTraceback (most recent call last): ..."
        if state == State.QUEUED and rng.random() < SCHEDULED_SHARE:
            values["run_at"] = now + rng.uniform(60, 86400)
        if state == State.RUNNING:
            values.update(worker="bench:1:w:0", lease_until=now + 3600)
        record = JobRecord(
            id=new_job_id(), task=task, payload=payload, state=state, queue=queue, **values
        )
        rows.append((*sqlite_store._field_values(record), record.expires_at))
    db = store._db
    with store._writing:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sqlite_store._SQL["insert_plain"], rows)
        db.execute("COMMIT")


def time_pages(app: Flask, pages: dict[str, str]) -> dict[str, list[float]]:
    client = app.test_client()
    timings: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(ROUNDS):
        for name, url in pages.items():
            began = time.perf_counter()
            response = client.get(url)
            elapsed = time.perf_counter() - began
            assert response.status_code == 200, (url, response.status_code)
            timings[name].append(elapsed * 1000)
    return timings


def drain_rate(path: str, *, with_index: bool) -> float:
    """Jobs/s of one worker loop (claim 16, complete them, claim again) on a new store."""
    store = SqliteStore(path)
    try:
        if not with_index:
            store._db.execute("DROP INDEX afterward_jobs_finished")
        now = time.time()
        for number in range(DRAIN_JOBS):
            store.enqueue(
                JobRecord(
                    id=new_job_id(),
                    task="bench.noop",
                    payload=f'{{"args": [{number}], "kwargs": {{}}}}',
                    state=State.QUEUED,
                    created_at=now,
                    run_at=now,
                )
            )
        began = time.perf_counter()
        done: list[tuple[str, str | None]] = []
        while True:
            _, claimed = store.complete_and_claim_many(done, "bench", None, 30.0, 16)
            if not claimed:
                break
            done = [(record.id, "null") for record in claimed]
        return DRAIN_JOBS / (time.perf_counter() - began)
    finally:
        store.close()


def measure() -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    path = str(folder / "jobs.sqlite3")
    store = SqliteStore(path)
    began = time.perf_counter()
    fill(store, JOBS)
    filled = time.perf_counter() - began
    began = time.perf_counter()
    store._index_for_search(batch=JOBS)
    indexed = time.perf_counter() - began
    store.rollup(time.time())
    store.close()
    app = Flask("bench_dashboard", instance_path=str(folder))
    app.config.update(
        SECRET_KEY="bench",
        AFTERWARD_STORE=f"sqlite:///{path}",
        AFTERWARD_WORKERS=0,
        AFTERWARD_DASHBOARD=True,
    )
    afterward = Afterward(app)
    try:
        opened: SqliteStore = app.extensions["afterward"].store
        first = opened.browse(JobFilter(state="failed"), limit=1, now=time.time())
        pages = {
            "overview `/`": "/afterward/",
            "failed, queue mail `/browse?state=failed&queue=mail`": (
                "/afterward/browse?state=failed&queue=mail"
            ),
            "succeeded, 2nd page": "",
            "queued `/browse?state=queued`": "/afterward/browse?state=queued",
            "search `/browse?q=user4242@`": "/afterward/browse?q=user4242@",
            "task and search `/browse?task=shop.charge&q=example`": (
                "/afterward/browse?task=shop.charge&q=example"
            ),
            "all jobs `/browse`": "/afterward/browse",
            "one job `/job/<id>`": f"/afterward/job/{first.records[0].id}",
        }
        second = opened.browse(JobFilter(state="succeeded"), limit=50, now=time.time())
        pages["succeeded, 2nd page"] = (
            f"/afterward/browse?state=succeeded&cursor={second.next_cursor}"
        )
        timings = time_pages(app, pages)
    finally:
        afterward.close(app, timeout=5)
    setup = {"fill_s": filled, "index_s": indexed}
    # Side by side, the order alternated: the machine is shared and its load drifts.
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for number in range(DRAIN_ROUNDS):
        for variant in ("with", "without") if number % 2 == 0 else ("without", "with"):
            path = str(folder / f"drain-{variant}-{number}.sqlite3")
            rates[variant].append(drain_rate(path, with_index=variant == "with"))
    drain = {variant: statistics.median(values) for variant, values in rates.items()}
    drain["ratio"] = statistics.median(
        with_ / without for with_, without in zip(rates["with"], rates["without"], strict=True)
    )
    return timings, setup, drain


def report(
    timings: dict[str, list[float]], setup: dict[str, float], drain: dict[str, float]
) -> str:
    lines = [
        "## Dashboard: server time of its pages with 200,000 jobs",
        "",
        harness.machine(f"SQLite {sqlite3.sqlite_version}"),
        "",
        f"**Method.** A sqlite store with {JOBS:,} jobs (72% succeeded, 8% failed, 4% "
        "cancelled, 12% queued of which a quarter scheduled, 1% deferred, 1% running; "
        "4 queues, 6 tasks, spread over 24 h), filled in one transaction "
        f"({setup['fill_s']:.1f} s), its search index built in one batch "
        f"({setup['index_s']:.1f} s) and rolled up. Each page requested {ROUNDS} times "
        "through the Flask test client, in-process: the app's time, rendering included, "
        f"no network. Target: under {TARGET_MS:.0f} ms each.",
        "",
        "| page | median ms | slowest ms |",
        "|---|---:|---:|",
    ]
    for name, values in timings.items():
        median = statistics.median(values)
        flag = "" if median < TARGET_MS else " (over target)"
        lines.append(f"| {name} | {median:.1f}{flag} | {max(values):.1f} |")
    ratio = drain["ratio"]
    lines += [
        "",
        "**What the dashboard costs the job path.** Its one per-job write is an entry in "
        "the `afterward_jobs_finished` index when a job finishes (search is indexed in "
        "batches by the rollup, the series once a minute). Drain rate of one worker loop "
        f"(claim 16, complete, repeat) over {DRAIN_JOBS:,} jobs, {DRAIN_ROUNDS} rounds "
        "side by side, the order alternated; medians: "
        f"{drain['with']:,.0f} jobs/s with the index, {drain['without']:,.0f} without "
        f"(× {ratio:.2f}, the median of the per-round ratios).",
    ]
    return "\n".join(lines)


def run() -> str:
    return report(*measure())


BENCHMARK = Benchmark(name="dashboard", run=run)

if __name__ == "__main__":
    threading.current_thread().name = "bench"
    print(run())
