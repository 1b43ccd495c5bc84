"""The job systems the tier-2 benchmark compares, and the Redis server two of them need.

Each :class:`System` says how to point its processes at a fresh store (environment
variables), which worker command to start, and how to check afterwards that no job
was left behind. Producers are ``tier2_producer.py``; workers are each system's own
command line, with one worker (thread or process) and quiet logging.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import os
import pathlib
import sqlite3
import subprocess
import sys
import time

import harness
import tier2_common

BIN = pathlib.Path(sys.executable).parent
BENCH_DIR = pathlib.Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class Redis:
    """A redis-server this benchmark started: 127.0.0.1, a free port, AOF every second."""

    url: str
    process: subprocess.Popen[bytes]

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()


@contextlib.contextmanager
def redis_server(workdir: pathlib.Path) -> cabc.Iterator[Redis]:
    """Start redis-server for the run; stop its process group at the end, whatever happens."""
    import redis

    port = harness.free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(workdir)]
    command += ["--loglevel", "warning", "--protected-mode", "yes"]
    with (workdir / "redis.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {workdir}/redis.log") from None
                time.sleep(0.05)
        yield Redis(url, process)
    finally:
        harness.stop_group(process)


@dataclasses.dataclass(frozen=True)
class System:
    """One row of the table."""

    key: str  #: short id, also the producer's SYSTEM argument family
    label: str  #: the table's row label
    producer: str  #: ``tier2_producer.py`` SYSTEM
    has_burst: bool  #: its worker can exit by itself once the queue is empty

    def env(self, run: pathlib.Path, redis: Redis | None) -> dict[str, str]:
        """The environment its producer and worker get, for a fresh store under ``run``."""
        env = {tier2_common.DB_ENV: str(run / "jobs.sqlite3")}
        sync = "?synchronous=FULL" if self.key == "afterward-full" else ""
        env[tier2_common.STORE_ENV] = f"sqlite:///{run / 'jobs.sqlite3'}{sync}"
        if redis is not None:
            env[tier2_common.REDIS_ENV] = redis.url
            if self.key == "afterward-redis":
                env[tier2_common.STORE_ENV] = redis.url
        if self.key == "afterward-base":
            # The same benchmark on another checkout's code, imported before ours.
            env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), f"{BASE_SRC}/src"])
        return env

    def worker(self, env: dict[str, str], *, burst: bool) -> list[str]:
        """The worker command line: one worker, quiet, running every queue it knows."""
        python = sys.executable
        if self.producer == "afterward":
            command = [python, "-m", "flask", "--app", "tier2_afterward_app:create_app"]
            command += ["afterward", "worker", "--threads", "1"]
        elif self.producer == "huey":
            # Its defaults but two: no periodic tasks (there are none), and idle
            # polling capped at 0.5 s like flask-afterward's, not 10 s.
            command = [python, str(BIN / "huey_consumer"), "tier2_huey_app.huey"]
            command += ["-w", "1", "-k", "thread", "-q", "-n", "-m", "0.5"]
        elif self.producer == "rq":
            command = [python, str(BIN / "rq"), "worker", "-w", "rq.worker.SimpleWorker"]
            command += ["-q", "-u", env[tier2_common.REDIS_ENV], tier2_common.QUEUE]
        elif self.producer == "celery":
            command = [python, "-m", "celery", "-A", "tier2_celery_app", "worker"]
            command += ["--pool", "threads", "--concurrency", "1", "-Q", tier2_common.QUEUE]
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            command += ["--loglevel", "WARNING"]
        else:
            command = [python, "tier2_raw.py", "worker"]
        return [*command, "--burst"] if burst and self.has_burst else command

    def leftovers(self, env: dict[str, str], expected: int) -> str:
        """'' if exactly ``expected`` jobs ran once and none is left; else what is wrong."""
        if self.key == "afterward-redis":
            return _afterward_redis_leftovers(env[tier2_common.REDIS_ENV], expected)
        if self.producer == "afterward":
            return _afterward_leftovers(env[tier2_common.DB_ENV], expected)
        if self.producer in ("huey", "raw"):
            table = "task" if self.producer == "huey" else "queue"
            with contextlib.closing(sqlite3.connect(env[tier2_common.DB_ENV])) as db:
                (left,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
            return f"{left} jobs left in the queue" if left else ""
        import redis

        with redis.Redis.from_url(env[tier2_common.REDIS_ENV]) as client:
            key = f"rq:queue:{tier2_common.QUEUE}" if self.producer == "rq" else tier2_common.QUEUE
            left = client.llen(key)
            failed = client.zcard(f"rq:failed:{tier2_common.QUEUE}")
        return f"{left} jobs left in the queue, {failed} failed" if left or failed else ""


def _afterward_leftovers(path: str, expected: int) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT state, count(*), max(attempts) FROM afterward_jobs GROUP BY state"
        ).fetchall()
    states = {state: (count, attempts) for state, count, attempts in rows}
    succeeded, attempts = states.pop("succeeded", (0, 0))
    if states or succeeded != expected or attempts != 1:
        return f"expected {expected} jobs succeeded once, found {rows}"
    return ""


def _afterward_redis_leftovers(url: str, expected: int) -> str:
    from flask_afterward.records import State
    from flask_afterward.stores.redis import RedisStore

    store = RedisStore(url)
    try:
        counts = store.stats(since=0.0).counts
        attempts = {record.attempts for record in store.list(limit=expected + 1)}
    finally:
        store.close()
    if counts != {("default", State.SUCCEEDED): expected} or attempts != {1}:
        return f"expected {expected} jobs succeeded once, found {counts}, attempts {attempts}"
    return ""


#: the systems that need the run's Redis
USES_REDIS = frozenset({"afterward-redis", "rq", "celery"})

SYSTEMS: list[System] = [
    System("afterward-normal", "flask-afterward, sqlite NORMAL (default)", "afterward", True),
    System("afterward-full", "flask-afterward, sqlite `?synchronous=FULL`", "afterward", True),
    System("afterward-redis", "flask-afterward, `redis://` (AOF everysec)", "afterward", True),
    System("huey", "Huey `SqliteHuey` (WAL, FULL)", "huey", False),
    System("rq", "RQ `SimpleWorker`, Redis", "rq", True),
    System("celery", "Celery, Redis broker, threads pool", "celery", False),
    System("raw", "raw SQLite (WAL, NORMAL): reference", "raw", True),
]
#: BENCH_BASE_SRC=/path/to/another/checkout adds a row for its code, measured beside
#: ours in every round: how a change is compared with main, side by side.
BASE_SRC = os.environ.get("BENCH_BASE_SRC")
if BASE_SRC:
    SYSTEMS.insert(
        1, System("afterward-base", f"flask-afterward at {BASE_SRC}, NORMAL", "afterward", True)
    )
#: BENCH_SYSTEMS=key,key measures only those rows (``afterward-normal`` always).
if os.environ.get("BENCH_SYSTEMS"):
    _wanted = {"afterward-normal", *os.environ["BENCH_SYSTEMS"].split(",")}
    SYSTEMS[:] = [system for system in SYSTEMS if system.key in _wanted]
#: the row every ratio is against
BASE = "afterward-normal"
