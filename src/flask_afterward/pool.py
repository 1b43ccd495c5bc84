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
import collections.abc as cabc
import logging
import os
import queue
import threading
import time
import weakref

logger = logging.getLogger(__name__)

_Item = tuple[cabc.Callable[[], None], int]


class CallbackPool:
    """Named daemon threads fed by a queue that holds at most ``max_pending`` units.

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
        self._lock = threading.Condition()
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0
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
            if not self._threads:
                self._start()
        self._queue.put((fn, weight))
        return True

    def _start(self) -> None:
        # Daemon threads would die mid-callback at exit; this gives them their time.
        # Registered first: an exit that begins while the threads are starting must
        # still find it, and it waits on the lock we hold until they all run.
        if self.close_at_exit:
            atexit.register(self.close)
        # Made here, on first use, not at import or init_app: under gevent with
        # --preload the app loads before monkey-patching, and an unpatched queue would
        # block the whole worker process in get().
        self._queue = queue.SimpleQueue()
        for number in range(1, self.size + 1):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, weight = item
            try:
                fn()
            except BaseException:
                # Even SystemExit from a callback must not end this thread: the pool
                # would silently lose capacity for good.
                logger.exception("Unexpected error in %s.", threading.current_thread().name)
            finally:
                with self._lock:
                    self._pending -= weight
                    if self._pending <= self.max_pending // 2:
                        self._is_saturated = False
                    self._lock.notify_all()

    @property
    def pending(self) -> int:
        """Units queued or running now."""
        return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if ``timeout`` ran out."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = None) -> int:
        """Stop taking work, let queued work finish within ``timeout``, stop the threads.

        Returns how many units did not finish in time; they are logged, not hidden.
        Work submitted afterwards is refused, so its callers run it inline.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        with self._lock:
            was_closed, self._is_closed = self._is_closed, True
            threads = list(self._threads)
        if was_closed:
            return 0
        atexit.unregister(self.close)
        for _ in threads:
            self._queue.put(None)  # after the queued work: FIFO drains it first
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
