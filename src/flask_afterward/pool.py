"""A small bounded thread pool for after-response callbacks.

Why not :class:`concurrent.futures.ThreadPoolExecutor`: its queue is unbounded (we need
back-pressure, not memory growth), and its threads are joined without a time limit at
interpreter exit, whereas we must give pending work exactly
``AFTERWARD_SHUTDOWN_TIMEOUT`` seconds and then say how much was left.

Threads start on first use, so importing or configuring the extension starts nothing,
and a process forked afterwards (gunicorn ``--preload``) starts its own.
"""

from __future__ import annotations

import atexit
import collections
import collections.abc as cabc
import logging
import os
import threading
import time
import typing as t
import weakref

logger = logging.getLogger(__name__)

#: a unit of work: the function, how many units it counts for, when it was queued
_Item = tuple[cabc.Callable[[], None], int, float]

#: Seconds a thread that ran out of work stays awake to collect more (see the class).
COLLECT_DELAY: t.Final = 0.005
#: Seconds after which queued work may go to any thread, not only the collector: the
#: collector is stuck in a slow callback. Also how often one waiting thread checks
#: while the pool is busy, so this bounds the wait even when no new work arrives.
STALL_LIMIT: t.Final = 0.02


class CallbackPool:
    """Named daemon threads taking work from a list that holds at most ``max_pending`` units.

    Waking a sleeping thread costs more than a short callback: a futex wake-up, a
    context switch, and two hand-offs of the GIL with the thread serving requests. So
    under load the pool does not wake a thread per callback. A thread that runs out
    of work becomes the *collector*: it stays awake for ``COLLECT_DELAY``, then runs
    what arrived meanwhile, and again, until a delay passes with nothing new. While
    there is a collector, new work wakes nobody. When nothing is going on, the threads
    wait without waking at all, and the first new unit wakes one at once.

    A slow callback must not hold up the work queued behind it while other threads
    wait: work that has been queued for ``STALL_LIMIT`` goes to any thread, and while
    the pool is busy one waiting thread wakes every ``STALL_LIMIT`` to check for it.

    :param threads: how many threads run work.
    :param max_pending: how many units may be queued or running; ``submit`` refuses
        beyond it, and the caller runs the work itself.
    :param shutdown_timeout: seconds ``close`` at interpreter exit waits for the rest.
    :param name: thread name prefix; threads are ``{name}-1`` … ``{name}-N``.
    :param close_at_exit: close (with ``shutdown_timeout``) at interpreter exit; off
        when the owner closes the pool itself, under one deadline with other work.
    """

    def __init__(
        self,
        *,
        threads: int,
        max_pending: int,
        shutdown_timeout: float,
        name: str = "flask-afterward-callback",
        close_at_exit: bool = True,
    ) -> None:
        self.size = threads
        self.max_pending = max_pending
        self.shutdown_timeout = shutdown_timeout
        self.name = name
        self.close_at_exit = close_at_exit
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        # Also called in a forked child: the parent's threads do not exist there, and
        # its lock may have been held by one of them at the moment of the fork.
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._is_idle = threading.Condition(self._lock)
        self._work: collections.deque[_Item] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # units queued or running
        self._running = 0  # threads running a unit
        self._waiting = 0  # threads waiting on _has_work
        self._has_collector = False
        self._has_standby = False  # a waiting thread checks every STALL_LIMIT
        self._is_closed = False
        self._is_saturated = False

    def submit(self, fn: cabc.Callable[[], None], weight: int = 1) -> bool:
        """Queue ``fn`` and return True, or return False if the pool is full or closed.

        ``weight`` is how many units ``fn`` counts for (the callbacks of one request).
        On False the caller is expected to run ``fn`` itself: that is the
        back-pressure, and nothing is dropped.
        """
        with self._lock:
            if self._is_closed:
                return False
            if self._pending + weight > self.max_pending:
                if not self._is_saturated:
                    self._is_saturated = True
                    logger.warning(
                        "%d callbacks are pending, the limit: running new ones inline "
                        "until the pool catches up. Raise AFTERWARD_CALLBACK_THREADS "
                        "or make the callbacks faster.",
                        self._pending,
                    )
                return False
            self._pending += weight
            now = time.monotonic()
            self._work.append((fn, weight, now))
            if not self._threads:
                self._start()
            else:
                self._wake_if_needed(now)
        return True

    def _is_stalled(self, now: float) -> bool:
        """Whether the oldest queued unit has waited ``STALL_LIMIT``; needs work queued."""
        return now - self._work[0][2] > STALL_LIMIT

    def _wake_if_needed(self, now: float) -> None:
        """Wake a waiting thread if the queued work has nobody to take or watch it.

        Nobody takes it without a collector; nobody notices a collector stuck in a slow
        callback without a standby; and work queued too long needs taking now.
        """
        if self._waiting and (
            not self._has_collector or not self._has_standby or self._is_stalled(now)
        ):
            self._has_work.notify()

    def _start(self) -> None:
        # Daemon threads would die mid-callback at exit; this gives them their time.
        # Registered first: an exit that begins while the threads are starting must
        # still find it, and it waits on the lock we hold until they all run.
        if self.close_at_exit:
            atexit.register(self.close)
        for number in range(1, self.size + 1):
            thread = threading.Thread(target=self._run, name=f"{self.name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        is_collector = False
        while True:
            with self._lock:
                item, is_collector = self._next(is_collector)
            if item is None:
                return
            fn, weight, _ = item
            try:
                fn()
            except BaseException:
                # Even SystemExit from a callback must not end this thread: the pool
                # would silently lose capacity for good.
                logger.exception("Unexpected error in %s.", threading.current_thread().name)
            finally:
                with self._lock:
                    self._running -= 1
                    self._pending -= weight
                    if self._pending <= self.max_pending // 2:
                        self._is_saturated = False
                    if not self._pending:
                        self._is_idle.notify_all()

    def _next(self, is_collector: bool) -> tuple[_Item | None, bool]:
        """Wait for the next unit this thread may run (None: closed and drained).

        Called with the lock held; returns whether this thread is now the collector.
        """
        has_collected = False
        while True:
            work = self._work
            if work and (
                is_collector
                or not self._has_collector
                or self._is_closed
                or self._is_stalled(time.monotonic())
            ):
                item = work.popleft()
                self._running += 1
                if work:
                    self._wake_if_needed(time.monotonic())
                return item, is_collector
            if self._is_closed and not work:
                if is_collector:
                    self._has_collector = False
                return None, False
            if not self._has_collector:
                self._has_collector = is_collector = True
            if is_collector and not has_collected:
                self._lock.release()
                try:
                    time.sleep(COLLECT_DELAY)  # without the lock: submit wakes nobody
                finally:
                    self._lock.acquire()
                has_collected = True
                continue
            if is_collector:  # a whole delay passed, and nothing came
                self._has_collector = is_collector = False
            is_standby = not self._has_standby and bool(work or self._running)
            self._has_standby |= is_standby
            self._waiting += 1
            try:
                self._has_work.wait(STALL_LIMIT if is_standby else None)
            finally:
                self._waiting -= 1
                if is_standby:
                    self._has_standby = False
            has_collected = False

    @property
    def pending(self) -> int:
        """Units queued or running now."""
        return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if ``timeout`` ran out."""
        with self._lock:
            return self._is_idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = None) -> int:
        """Stop taking work, let queued work finish within ``timeout``, stop the threads.

        Returns how many units did not finish in time; they are logged, not hidden.
        Work submitted afterwards is refused, so its callers run it inline.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        with self._lock:
            was_closed, self._is_closed = self._is_closed, True
            threads = list(self._threads)
            self._has_work.notify_all()  # waiting threads drain what is left, then end
        if was_closed:
            return 0
        atexit.unregister(self.close)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = self._pending
        if left:
            logger.warning(
                "%d after-response callbacks did not finish within the %.1f s "
                "shutdown timeout (AFTERWARD_SHUTDOWN_TIMEOUT).",
                left,
                timeout,
            )
        return left


# A process-wide registry is the one way to reach every pool right after a fork;
# os.register_at_fork offers no per-object hook. Weak, so it keeps nothing alive.
_POOLS: weakref.WeakSet[CallbackPool] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for pool in list(_POOLS):
        pool._reset()


os.register_at_fork(after_in_child=_reset_after_fork)
