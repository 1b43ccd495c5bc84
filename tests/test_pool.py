"""The callback pool on its own: batching wake-ups must not cost parallelism or idle CPU.

The pool lets one thread collect work for a moment instead of waking a thread per
unit (see :class:`CallbackPool`). These tests pin what that must not break: a slow
unit never holds up the ones queued behind it while threads are free, slow units run
side by side, and an idle pool's threads stay asleep.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import threading
import time
import uuid

import pytest

from flask_afterward.pool import CallbackPool
from flask_afterward.pool import STALL_LIMIT

#: generous: the machine is shared, and these only bound a wait that should be short
WAIT = 5.0


@pytest.fixture
def pool() -> cabc.Iterator[CallbackPool]:
    # A name of its own, so its threads can be told from any other pool's by name.
    name = f"flask-afterward-callback-{uuid.uuid4().hex[:8]}"
    pool = CallbackPool(
        threads=4, max_pending=100, shutdown_timeout=WAIT, close_at_exit=False, name=name
    )
    yield pool
    pool.close()


def threads_of(pool: CallbackPool) -> list[threading.Thread]:
    """The pool's live threads, found as anyone can: by the names it gives them."""
    return [thread for thread in threading.enumerate() if thread.name.startswith(f"{pool.name}-")]


def warm_up(pool: CallbackPool) -> None:
    """Start the threads and leave one of them collecting, the state under load."""
    assert pool.submit(lambda: None)
    assert pool.wait_idle(WAIT)


@pytest.mark.parametrize("pause", [0.0, 0.001, STALL_LIMIT * 2])
def test_a_slow_unit_does_not_hold_up_the_next(pool: CallbackPool, pause: float) -> None:
    # Given a pool that just ran something (its thread is collecting)
    warm_up(pool)
    release = threading.Event()
    fast_ran = threading.Event()

    # When a slow unit is queued, and a fast one right behind it (or a moment later)
    assert pool.submit(lambda: release.wait(WAIT * 2) and None)
    time.sleep(pause)
    assert pool.submit(fast_ran.set)

    # Then the fast one runs while the slow one still blocks its thread
    try:
        assert fast_ran.wait(WAIT)
        assert not release.is_set()
    finally:
        release.set()
    assert pool.wait_idle(WAIT)


def test_slow_units_run_side_by_side_up_to_the_thread_count(pool: CallbackPool) -> None:
    # Given a pool that just ran something
    warm_up(pool)
    # When as many slow units as threads are queued at once
    all_running = threading.Barrier(pool.size + 1, timeout=WAIT)
    for _ in range(pool.size):
        assert pool.submit(lambda: all_running.wait() and None)

    # Then they all run at the same time (the barrier needs every one of them)
    all_running.wait()
    assert pool.wait_idle(WAIT)


def test_every_unit_of_a_burst_runs_once(pool: CallbackPool) -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def unit(number: int) -> None:
        with lock:
            ran.append(number)

    for number in range(90):
        assert pool.submit(lambda number=number: unit(number))  # type: ignore[misc]
        if number % 30 == 0:
            time.sleep(STALL_LIMIT)  # some arrive while a thread collects, some not

    assert pool.wait_idle(WAIT)
    assert sorted(ran) == list(range(90))


def _switches(threads: list[threading.Thread]) -> int:
    """Context switches so far of these threads, from the kernel's count."""
    total = 0
    for thread in threads:
        assert thread.native_id is not None  # set once a thread has started
        with open(f"/proc/self/task/{thread.native_id}/status") as status:
            for line in status:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="needs the kernel's per-thread counts in /proc"
)
def test_an_idle_pool_does_not_wake_its_threads(pool: CallbackPool) -> None:
    # Given a pool that ran a burst and went idle
    for _ in range(20):
        assert pool.submit(lambda: None)
    assert pool.wait_idle(WAIT)
    threads = threads_of(pool)
    assert len(threads) == pool.size
    # (the collector and the standby each wake once more, then wait for work)
    deadline = time.monotonic() + WAIT
    before = _switches(threads)
    while True:
        time.sleep(STALL_LIMIT * 3)
        settled = _switches(threads)
        if settled == before or time.monotonic() > deadline:
            break
        before = settled

    # When nothing happens for a while
    time.sleep(0.3)

    # Then no pool thread woke up: no timer runs while there is no work
    assert _switches(threads) == settled


def test_closing_a_collecting_pool_runs_what_is_queued(pool: CallbackPool) -> None:
    warm_up(pool)
    ran = threading.Event()
    assert pool.submit(ran.set)

    started = threads_of(pool)
    assert pool.close(WAIT) == 0
    assert ran.is_set()
    assert started and threads_of(pool) == []
    assert not any(thread.is_alive() for thread in started)
