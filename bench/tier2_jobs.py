"""Tier 2 durable jobs: flask-afterward's sqlite and redis stores against Huey, RQ, Celery.

    .venv/bin/python bench/run.py tier2-jobs       # the docs section (make bench runs it too)
    BENCH_JOBS=1000 BENCH_ROUNDS=1 BENCH_RSS_JOBS=5000 .venv/bin/python bench/run.py tier2-jobs
    .venv/bin/python bench/tier2_jobs.py rss       # only the worker-memory part, printed

For every system, side by side in each round (order rotated): the enqueue rate of one
producer process, the drain rate of one worker process with the queue filled first,
and the drain rate with the producer running at the same time. Then the RSS of a
flask-afterward worker over ``BENCH_RSS_JOBS`` jobs. See ``tier2_common`` for how marks
time the jobs from inside each worker.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import typing as t

import harness
import tier2_common
import tier2_raw
from harness import Benchmark
from tier2_systems import BASE
from tier2_systems import Redis
from tier2_systems import redis_server
from tier2_systems import System
from tier2_systems import SYSTEMS
from tier2_systems import USES_REDIS

JOBS = int(os.environ.get("BENCH_JOBS", "10000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RSS_JOBS = int(os.environ.get("BENCH_RSS_JOBS", "100000"))
RSS_WARMUP = 1000
#: flask-afterward at NORMAL: jobs/s for enqueue, drain, drain with the producer running
TARGETS = {"enqueue": 15000.0, "drain": 8000.0, "concurrent": 5000.0}
FULL_TARGET = 2600.0
RSS_TARGET_MB = 10.0
METRICS = ("enqueue", "drain", "concurrent")
USAGE = ("cpu_us", "running", "waiting", "blocked")


@dataclasses.dataclass
class Result:
    """One system in one round, in jobs/s (seconds for ``startup``)."""

    enqueue: float
    drain: float
    concurrent: float
    startup: float  #: worker spawn → its first job
    producer_concurrent: float  #: the producer's own rate while the worker ran
    producer_usage: dict[str, float]  #: ``tier2_common.usage`` of the enqueue
    worker_usage: dict[str, float]  #: of the drain, in the worker
    producer_concurrent_usage: dict[str, float]  #: of the enqueue, worker running
    worker_concurrent_usage: dict[str, float]  #: of the drain, producer running


@dataclasses.dataclass
class Rss:
    warm_kb: int  #: after RSS_WARMUP jobs
    end_kb: int  #: after RSS_WARMUP + RSS_JOBS jobs
    peak_kb: int  #: VmHWM at the end
    rate: float  #: jobs/s over the RSS_JOBS


class Run:
    """One measurement: a fresh store under ``path``, its processes, their logs."""

    def __init__(self, system: System, path: pathlib.Path, redis: Redis | None) -> None:
        self.system = system
        self.path = path
        self.marks = path / "marks"
        self.marks.mkdir(parents=True)
        if redis is not None:
            redis.flush()
        pythonpath = os.pathsep.join(
            filter(None, [str(harness.BENCH), os.environ.get("PYTHONPATH")])
        )
        self.env = {**os.environ, "PYTHONPATH": pythonpath, **system.env(path, redis)}

    def spawn(self, command: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.path / log).open("ab") as file:
            return subprocess.Popen(
                command,
                cwd=harness.BENCH,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )

    def worker(self, *, burst: bool) -> subprocess.Popen[bytes]:
        return self.spawn(self.system.worker(self.env, burst=burst), "worker.log")

    def produce(self, count: int, **marks: str | int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "tier2_producer.py", self.system.producer]
        command += ["--count", str(count), "--marks", str(self.marks)]
        for name, value in marks.items():
            command += [f"--{name}", str(value)]
        with (self.path / "producer.log").open("ab") as log:
            return subprocess.Popen(
                command,
                cwd=harness.BENCH,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )

    def finish(self, producer: subprocess.Popen[bytes]) -> dict[str, t.Any]:
        """Wait for a producer; its ``{"started", "seconds"}``."""
        try:
            out, _ = producer.communicate(timeout=timeout(RSS_JOBS + JOBS))
        finally:
            harness.stop_group(producer)
        if producer.returncode != 0:
            raise RuntimeError(f"producer failed: {self.log('producer.log')}")
        return dict(json.loads(out))

    def mark(self, name: str, process: subprocess.Popen[bytes], count: int) -> dict[str, float]:
        """Wait until the worker ran mark ``name``; fail if it died first or took too long."""
        deadline = time.monotonic() + timeout(count)
        while True:
            is_over = process.poll() is not None or time.monotonic() > deadline
            found = tier2_common.read_mark(self.marks / name)  # after poll(): no race
            if found is not None:
                return found
            if is_over:
                raise RuntimeError(f"mark {name!r} never ran: {self.log('worker.log')}")
            time.sleep(0.005)

    def check(self, expected: int) -> None:
        wrong = self.system.leftovers(self.env, expected)
        if wrong:
            raise RuntimeError(f"{self.system.label}: {wrong} ({self.path})")

    def log(self, name: str) -> str:
        path = self.path / name
        return f"{path}:\n{path.read_text(errors='replace')[-3000:]}" if path.exists() else ""


def timeout(count: int) -> float:
    return 60.0 + count / 100


def stop(process: subprocess.Popen[bytes], *, wait: bool) -> None:
    """End a worker: let a burst one exit by itself first, then stop its process group."""
    if wait:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            pass
    harness.stop_group(process)


def measure_filled(system: System, path: pathlib.Path, redis: Redis | None) -> dict[str, t.Any]:
    """Enqueue N (timed) between two marks, then drain them with one worker."""
    run = Run(system, path, redis)
    enqueued = run.finish(run.produce(JOBS, first="start", last="end"))
    spawned = time.time()
    worker = run.worker(burst=True)
    try:
        start = run.mark("start", worker, 0)
        end = run.mark("end", worker, JOBS)
    finally:
        stop(worker, wait=system.has_burst)
    run.check(JOBS + 2)
    return {
        "enqueue": JOBS / enqueued["seconds"],
        "drain": JOBS / (end["time"] - start["time"]),
        "startup": start["time"] - spawned,
        "producer_usage": {key: enqueued[key] for key in USAGE},
        "worker_usage": tier2_common.usage(start, end, JOBS),
    }


def measure_concurrent(system: System, path: pathlib.Path, redis: Redis | None) -> dict[str, t.Any]:
    """A warm, idle worker; then a producer enqueues N while it runs them."""
    run = Run(system, path, redis)
    worker = run.worker(burst=False)
    try:
        run.finish(run.produce(0, first="ready"))
        run.mark("ready", worker, 0)
        producer = run.produce(JOBS, first="start", last="end")
        enqueued = run.finish(producer)
        start = run.mark("start", worker, 0)
        end = run.mark("end", worker, JOBS)
    finally:
        stop(worker, wait=False)
    run.check(JOBS + 3)
    return {
        "concurrent": JOBS / (end["time"] - start["time"]),
        "producer_concurrent": JOBS / enqueued["seconds"],
        "producer_concurrent_usage": {key: enqueued[key] for key in USAGE},
        "worker_concurrent_usage": tier2_common.usage(start, end, JOBS),
    }


def measure_round(number: int, workdir: pathlib.Path, redis: Redis) -> dict[str, Result]:
    shift = number % len(SYSTEMS)
    results = {}
    for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
        uses_redis = redis if system.key in USES_REDIS else None
        path = workdir / f"round-{number}" / system.key
        values = measure_filled(system, path / "filled", uses_redis)
        values |= measure_concurrent(system, path / "concurrent", uses_redis)
        results[system.key] = Result(**values)
        print(
            f"bench: round {number + 1} {system.key}: enqueue {values['enqueue']:,.0f}/s, "
            f"drain {values['drain']:,.0f}/s, with producer {values['concurrent']:,.0f}/s",
            flush=True,
        )
    return results


def measure_rss(workdir: pathlib.Path) -> Rss:
    """One flask-afterward worker (NORMAL) runs RSS_WARMUP jobs, then RSS_JOBS more."""
    run = Run(SYSTEMS[0], workdir / "rss", None)
    run.finish(run.produce(RSS_JOBS, warmup=RSS_WARMUP, warm="warm", last="end"))
    worker = run.worker(burst=False)
    try:
        warm = run.mark("warm", worker, RSS_WARMUP)
        end = run.mark("end", worker, RSS_JOBS)
        time.sleep(0.5)  # idle now: what it keeps, not what it held for the last job
        end_kb = tier2_common.rss_kb(worker.pid)
        peak_kb = tier2_common.hwm_kb(worker.pid)
    finally:
        stop(worker, wait=False)
    run.check(RSS_WARMUP + RSS_JOBS + 2)
    rate = RSS_JOBS / (end["time"] - warm["time"])
    return Rss(int(warm["rss_kb"]), max(end_kb, int(end["rss_kb"])), peak_kb, rate)


def raw_cycles(workdir: pathlib.Path) -> float:
    return tier2_raw.cycles(str(workdir / "raw-cycles.sqlite3"), JOBS)


def loadavg() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def measure(workdir: pathlib.Path) -> tuple[list[dict[str, Result]], list[float], list[str]]:
    """Every round; raw SQLite cycles/s per round; the 1-min load average along the way."""
    rounds, cycles, loads = [], [], [loadavg()]
    with redis_server(workdir) as redis:
        for number in range(ROUNDS):
            rounds.append(measure_round(number, workdir, redis))
            cycles.append(raw_cycles(workdir / f"round-{number}"))
            loads.append(loadavg())
    return rounds, cycles, loads


def run() -> str:
    started = time.monotonic()
    busy_before = cpu_busy()
    with harness.workdir("tier2-jobs") as workdir:
        rounds, cycles, loads = measure(workdir)
        rss = measure_rss(workdir) if RSS_JOBS else None
        loads.append(loadavg())
    busy, total = (a - b for a, b in zip(cpu_busy(), busy_before, strict=True))
    load = Load(loads, busy / total if total else 0.0, time.monotonic() - started)
    return report(rounds, cycles, rss, load)


@dataclasses.dataclass
class Load:
    averages: list[str]  #: 1-min load average before, after each round, after the RSS part
    busy: float  #: share of all CPU time the machine spent busy during the run
    seconds: float


def rate(value: float) -> str:
    return f"{value:,.0f}"


def cell(values: list[float]) -> str:
    return f"{rate(harness.median(values))} ({rate(min(values))}–{rate(max(values))})"


def main_table(rounds: list[dict[str, Result]]) -> str:
    rows = []
    for system in SYSTEMS:
        row = [system.label]
        for metric in METRICS:
            values = [getattr(r[system.key], metric) for r in rounds]
            ratios = [getattr(r[system.key], metric) / getattr(r[BASE], metric) for r in rounds]
            row += [cell(values), f"{harness.median(ratios):.2f}"]
        rows.append(row)
    header = ["system", "enqueue/s", "×", "drain/s", "×", "drain/s, producer running", "×"]
    return harness.table(header, rows)


def median_usage(rounds: list[dict[str, Result]], key: str, side: str) -> dict[str, float]:
    return {name: harness.median([getattr(r[key], side)[name] for r in rounds]) for name in USAGE}


def usage_cell(usage: dict[str, float]) -> str:
    shares = (
        "—"
        if usage["waiting"] != usage["waiting"]
        else (f"{usage['waiting']:.0%} · {usage['blocked']:.0%}")
    )
    return f"{usage['cpu_us']:.0f} µs · {shares}"


#: the usage columns of the detail table: (Result field, header)
SIDES = [
    ("producer_usage", "enqueue alone: producer"),
    ("worker_usage", "drain alone: worker"),
    ("producer_concurrent_usage", "together: producer"),
    ("worker_concurrent_usage", "together: worker"),
]


def detail_table(rounds: list[dict[str, Result]]) -> str:
    rows = []
    for system in SYSTEMS:
        row = [system.label]
        row += [usage_cell(median_usage(rounds, system.key, side)) for side, _ in SIDES]
        producing = harness.median([r[system.key].producer_concurrent for r in rounds])
        startup = harness.median([r[system.key].startup for r in rounds])
        rows.append([*row, rate(producing), f"{startup:.2f}"])
    header = ["system (CPU µs/job · waiting for a CPU · blocked)"]
    header += [title for _, title in SIDES]
    header += ["enqueue/s, worker running", "worker start-up s"]
    return harness.table(header, rows)


def verdicts(rounds: list[dict[str, Result]]) -> str:
    lines = []
    for key, targets in (
        ("afterward-normal", TARGETS),
        ("afterward-full", dict.fromkeys(METRICS, FULL_TARGET)),
    ):
        parts = []
        for metric in METRICS:
            value = harness.median([getattr(r[key], metric) for r in rounds])
            mark = "✓" if value >= targets[metric] else "✗"
            parts.append(f"{NAMES[metric]} {rate(value)} ≥ {rate(targets[metric])} {mark}")
        for side, what in (("producer_usage", "enqueue"), ("worker_usage", "drain")):
            cpu_us = median_usage(rounds, key, side)["cpu_us"]
            parts.append(f"{what} on a CPU of its own: {rate(1e6 / cpu_us)}/s")
        label = next(s.label for s in SYSTEMS if s.key == key)
        lines.append(f"- {label}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


NAMES = {"enqueue": "enqueue", "drain": "drain", "concurrent": "drain with producer"}


def rss_text(rss: Rss | None) -> str:
    if rss is None:
        return "Worker memory: not measured in this run (`BENCH_RSS_JOBS=0`)."
    growth = (rss.end_kb - rss.warm_kb) / 1024
    mark = "✓" if growth < RSS_TARGET_MB else "✗"
    return (
        f"**Worker memory.** One `flask afterward worker --threads 1` (NORMAL) ran "
        f"{RSS_WARMUP:,} no-op jobs, then {RSS_JOBS:,} more (queue filled first). VmRSS "
        f"(`/proc/PID/status`) after the warm-up: {rss.warm_kb / 1024:.1f} MB; after the "
        f"{RSS_JOBS:,}: {rss.end_kb / 1024:.1f} MB; growth **{growth:+.1f} MB** "
        f"(target < {RSS_TARGET_MB:.0f} MB {mark}); peak (VmHWM) {rss.peak_kb / 1024:.1f} MB. "
        f"It drained them at {rate(rss.rate)} jobs/s with {RSS_JOBS + RSS_WARMUP:,} rows "
        "in the store."
    )


def versions() -> str:
    import sqlite3

    names = ["huey", "rq", "celery", "kombu", "redis"]
    parts = [f"{name} {harness.version(name)}" for name in names]
    server = harness.program_version(["redis-server", "--version"]).split()[2].removeprefix("v=")
    return ", ".join([*parts, f"redis-server {server}", f"SQLite {sqlite3.sqlite_version}"])


def report(
    rounds: list[dict[str, Result]], cycles: list[float], rss: Rss | None, load: Load
) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return f"""## Tier 2 durable jobs: flask-afterward against Huey, RQ and Celery

{harness.machine(versions())}
The machine was shared with other engineers' test runs: 1-min load average
{" → ".join(load.averages)} (before, after each round, after the memory part) on
{os.cpu_count()} CPUs, busy {load.busy:.0%} of the time over the {load.seconds:.0f} s run.
Read the ratios; the absolute rates are for orientation.

**Method** ({today}). N = {JOBS:,} no-op jobs per measurement, {ROUNDS} rounds, every
system measured in every round, the order rotated each round; each cell gives the
median (and the range) over rounds, and *×* the median of the per-round ratios against
flask-afterward at NORMAL. Every measurement gets a fresh store (a new SQLite file; a
`FLUSHALL` of Redis).
- *enqueue/s*: one producer process calls each system's public API N times
  (`task.delay()` in an app context; a Huey task call; `Queue.enqueue`; Celery
  `task.delay()`; one `INSERT` per transaction for raw SQLite), timed around the N calls.
- *drain/s*: then one worker process starts on the filled queue: `flask afterward worker
  --threads 1 --burst`; `huey_consumer -w 1 -k thread` (quiet, `-n`, idle polling capped
  at 0.5 s as ours); `rq worker -w rq.worker.SimpleWorker --burst`; `celery worker --pool
  threads --concurrency 1` (results ignored, no gossip/mingle/heartbeat); raw SQLite: a
  claim (`UPDATE … RETURNING`) and a `DELETE`, two commits per job. A *mark* job
  enqueued before the N and one after write the time when they run, so the rate is N
  over the time between them, measured inside the worker: process start-up is not
  counted (it is in the second table).
- *drain/s, producer running*: a worker is started and warm (it ran a mark), then the
  producer enqueues the N while the worker runs them; the rate is N over the time
  between the worker running the first mark and the last: until all N are done.
- Afterwards every job is checked: flask-afterward's N + marks all `succeeded` with one
  attempt each (at-least-once, no job run twice); the others' queues empty, none failed.
- Redis (`redis-server` on 127.0.0.1, started for the run and stopped after) keeps an
  append-only file fsynced every second, the closest to SQLite at NORMAL (a crash of
  the server loses nothing, a power cut the last second); Huey uses SQLite's default
  `synchronous` (FULL) and deletes a job when it takes it (at-most-once).

{main_table(rounds)}

Raw SQLite, insert + claim + delete of one job at a time in one process (three commits
per job; flask-afterward makes one and a fraction for a busy worker: the enqueue, and a
share of a claim that takes up to 16 jobs and records the previous ones' successes):
{cell(cycles)} cycles/s.

Targets for flask-afterward:
{verdicts(rounds)}

**Why.** Enqueueing a job is one commit, which writes every B-tree page it changed to
the WAL (the row, the id index and both runnable indexes), where raw SQLite's queue
writes one. A busy worker running quick jobs claims up to 16 in one transaction and
records their successes with its next claim, so draining costs a fraction of a commit
per job. At FULL every commit also waits for an fsync, so the disk sets the pace of
enqueue, and a worker pays one fsync per batch. Huey commits twice per job on two
B-trees, and deletes a job when it takes it (at-most-once). With producer and worker
together, both want SQLite's one write lock, and each commit of the other process
empties a connection's page cache: a worker that has caught up waits 5 ms before it
claims again, so that it takes several jobs at once instead of taking turns with the
producer job by job. Writers queue for the lock on a lock file (`flock`), so one that
finds it taken is woken the moment it is free (the *blocked* share growing in the second
table) instead of sleeping in SQLite's busy handler, which at FULL kept the worker from
claiming while the producer ran.

{detail_table(rounds)}

*CPU/job*: the producer's or worker's process CPU time (every thread) over the N jobs,
divided by N; *on a CPU of its own* above is one second divided by it. *Waiting for a
CPU* and *blocked* are shares of the wall time of the thread that ran the loop or the
jobs (`/proc/thread-self/schedstat`, read by the marks): *waiting* means runnable while
other processes held both CPUs (the shared machine, and on 2 CPUs the producer and
worker of the same run); *blocked* means asleep: fsync and other disk I/O, a lock, an
idle poll, Redis's answer. For Celery that thread is the pool thread, which gets jobs
from the consumer thread. *Start-up*: worker process spawn to its first job.

{rss_text(rss)}
"""


BENCHMARK = Benchmark("tier2-jobs", run)


def main() -> None:
    """``python tier2_jobs.py rss``: only the worker-memory part, printed, not written."""
    if sys.argv[1:] != ["rss"]:
        sys.exit(__doc__)
    with harness.workdir("tier2-rss") as workdir:
        print(rss_text(measure_rss(workdir)))


if __name__ == "__main__":
    main()
