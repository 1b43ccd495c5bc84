"""What the tier-2 benchmark's processes share: marks, RSS, and the environment.

A *mark* is a job that writes its :func:`clocks` and the worker's RSS to a file when it
runs. With one worker and a FIFO queue, a mark enqueued before N no-op jobs and one
after them time the N jobs from inside the worker, the same way for every system,
without counting process start-up or shutdown; the clocks also say how much CPU the
worker spent on them and how long its thread waited for a CPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time

#: The environment variables the bench passes to producers and workers.
STORE_ENV = "BENCH_T2_STORE"  #: flask-afterward's AFTERWARD_STORE
DB_ENV = "BENCH_T2_DB"  #: the SQLite file of Huey and of raw SQLite
REDIS_ENV = "BENCH_T2_REDIS"  #: redis://127.0.0.1:PORT/0 for RQ and Celery
QUEUE = "bench"  #: the queue name RQ and Celery use


def rss_kb(pid: int | str = "self") -> int:
    """VmRSS of a process, in KiB (0 once it has exited)."""
    return _status_field(pid, "VmRSS")


def hwm_kb(pid: int | str = "self") -> int:
    """VmHWM (peak RSS) of a process, in KiB."""
    return _status_field(pid, "VmHWM")


def _status_field(pid: int | str, name: str) -> int:
    try:
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


def clocks() -> dict[str, float]:
    """Now; this process's CPU seconds; this thread's seconds on a CPU and waiting for one.

    The last two come from ``/proc/thread-self/schedstat`` (the scheduler's run time and
    run-queue wait); the rest of a wall-clock interval the thread was blocked (I/O such
    as fsync, locks, sleeps, a server's answer).
    """
    run, wait, _ = pathlib.Path("/proc/thread-self/schedstat").read_text().split()
    return {
        "time": time.time(),
        "cpu": time.process_time(),
        "run": int(run) / 1e9,
        "wait": int(wait) / 1e9,
        "thread": threading.get_native_id(),
    }


def usage(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Between two :func:`clocks` of one thread: process CPU µs per job, and the shares
    of the interval the thread ran, waited for a CPU, and was blocked."""
    wall = after["time"] - before["time"]
    running = (after["run"] - before["run"]) / wall
    waiting = (after["wait"] - before["wait"]) / wall
    same = before["thread"] == after["thread"]
    return {
        "cpu_us": (after["cpu"] - before["cpu"]) / count * 1e6,
        "running": running if same else float("nan"),
        "waiting": waiting if same else float("nan"),
        "blocked": 1.0 - running - waiting if same else float("nan"),
    }


def write_mark(path: str) -> None:
    """The body of every system's ``mark`` task: its clocks, and the worker's RSS."""
    data = clocks() | {"rss_kb": rss_kb(), "pid": os.getpid()}
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(data, file)
    os.replace(temporary, path)  # the reader never sees half a file


def read_mark(path: pathlib.Path) -> dict[str, float] | None:
    """The mark at ``path``, or None while its job has not run."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
