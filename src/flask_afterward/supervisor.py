"""Run workers as a process: the engine of ``flask afterward worker``.

:func:`run_workers` runs one :class:`~flask_afterward.worker.WorkerGroup` in this
process; :class:`Supervisor` runs several worker processes and forwards signals to
them. Both stop in two stages, like django-tasks ``db_worker``: the first SIGTERM or
SIGINT stops claiming and gives running jobs ``AFTERWARD_SHUTDOWN_TIMEOUT`` seconds,
then puts what is left back in the queue (attempt given back); a second signal puts
running jobs back at once and exits with status 1.

Same layer as ``cli``, which imports this module; never the reverse.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
import typing as t

import click

if t.TYPE_CHECKING:
    from .worker import WorkerGroup

logger = logging.getLogger("flask_afterward")

#: What the first signal prints, once per command.
GRACEFUL_MESSAGE: t.Final = "shutting down gracefully… (press Ctrl+C again to force)"
#: A worker process that dies sooner than this after its start is not restarted: it
#: would only die again (bad code, bad store), so the supervisor stops instead.
MIN_UPTIME: t.Final = 5.0
#: Seconds a worker process gets, beyond the shutdown timeout, to exit before SIGKILL.
EXIT_GRACE: t.Final = 10.0
#: How often the main thread looks at signals, its threads and its children.
TICK: t.Final = 0.2


class Shutdown:
    """Two-stage shutdown on SIGTERM and SIGINT: the first asks, the second forces.

    Handlers only set events; the main thread acts on them, since printing or taking
    locks inside a signal handler can deadlock on what the interrupted code holds.
    """

    def __init__(self) -> None:
        #: set by the first signal: stop claiming, let running jobs finish
        self.requested = threading.Event()
        #: set by the second signal: put running jobs back and exit now
        self.forced = threading.Event()
        #: set by every signal, so a waiting main thread reacts at once
        self.wakeup = threading.Event()

    def _handle(self, signum: int, frame: object) -> None:
        (self.forced if self.requested.is_set() else self.requested).set()
        self.wakeup.set()

    @contextlib.contextmanager
    def installed(self) -> cabc.Iterator[Shutdown]:
        """Handle SIGTERM and SIGINT while the block runs; restore the old handlers."""
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, timeout: float) -> None:
        """Sleep ``timeout`` seconds, or less if a signal arrives."""
        self.wakeup.wait(timeout)
        self.wakeup.clear()


def _announce_shutdown(is_supervised: bool) -> None:
    logger.info("Worker process %d is shutting down gracefully.", os.getpid())
    if not is_supervised:  # the supervisor says it once for all its processes
        click.echo(GRACEFUL_MESSAGE, err=True)


def run_workers(
    group: WorkerGroup, *, shutdown_timeout: float, burst: bool, supervisor_pid: int | None
) -> int:
    """Run ``group`` in this process until a signal (or, with ``burst``, no runnable job).

    :param supervisor_pid: the :class:`Supervisor` that started this process; if it
        vanishes (``kill -9``), this process shuts down gracefully on its own.
    :return: the exit status: 0, or 1 when a second signal forced the shutdown.
    """
    with Shutdown().installed() as shutdown:
        group.start(burst=burst)
        logger.info(
            "Worker process %d started: %d threads, queues: %s.",
            os.getpid(),
            group.size,
            ", ".join(group.queues) if group.queues else "all",
        )
        while not shutdown.requested.is_set():
            if burst and group.join(0):
                logger.info("Worker process %d found no runnable job (--burst).", os.getpid())
                break
            if supervisor_pid is not None and os.getppid() != supervisor_pid:
                logger.warning("Worker process %d lost its supervisor.", os.getpid())
                shutdown.requested.set()
            shutdown.wait(TICK)
        else:  # a signal, or the loss of the supervisor, ended the loop
            _announce_shutdown(supervisor_pid is not None)
            _drain(group, shutdown, shutdown_timeout)
        requeued = group.requeue_running()
        group.close(0.0)
    if requeued:
        why = "a second signal" if shutdown.forced.is_set() else "AFTERWARD_SHUTDOWN_TIMEOUT"
        logger.warning(
            "Worker process %d put %d running jobs back in the queue (%s).",
            os.getpid(),
            requeued,
            why,
        )
    logger.info("Worker process %d stopped.", os.getpid())
    return 1 if shutdown.forced.is_set() else 0


def _drain(group: WorkerGroup, shutdown: Shutdown, timeout: float) -> None:
    """Stop claiming; wait for running jobs until ``timeout`` or a second signal."""
    group.stop.set()
    group.wake.set()
    deadline = time.monotonic() + timeout
    while not shutdown.forced.is_set():
        left = deadline - time.monotonic()
        if left <= 0 or group.join(min(left, TICK)):
            return


@dataclasses.dataclass(slots=True)
class _Child:
    process: subprocess.Popen[bytes]
    started: float


class Supervisor:
    """Start ``count`` worker processes, forward signals to them, restart the lost ones.

    :param command: a worker process's command line (``flask afterward worker …``).
    :param shutdown_timeout: after a first signal, how long the children may take.
    :param burst: children exit when no job is runnable; none is restarted.
    """

    def __init__(self, command: list[str], count: int, shutdown_timeout: float, burst: bool):
        self.command = command
        self.count = count
        self.shutdown_timeout = shutdown_timeout
        self.burst = burst
        self.children: dict[int, _Child] = {}
        self.is_failed = False
        self._forwarded = 0
        self._kill_at: float | None = None

    def run(self) -> int:
        """Supervise until every child exited; return the exit status."""
        with Shutdown().installed() as shutdown:
            for slot in range(self.count):
                self._start(slot)
            logger.info("Supervisor %d started %d worker processes.", os.getpid(), self.count)
            while self.children:
                self._forward(shutdown)
                self._reap(shutdown)
                if self._kill_at is not None and time.monotonic() >= self._kill_at:
                    self._kill_all()
                shutdown.wait(TICK)
        logger.info("Supervisor %d stopped.", os.getpid())
        return 1 if self.is_failed or shutdown.forced.is_set() else 0

    def _start(self, slot: int) -> None:
        # A process group of their own: a Ctrl+C in the terminal reaches only this
        # process, which forwards it once; otherwise each child would see it twice.
        process = subprocess.Popen(self.command, process_group=0)
        self.children[slot] = _Child(process, time.monotonic())

    def _forward(self, shutdown: Shutdown) -> None:
        stage = 2 if shutdown.forced.is_set() else 1 if shutdown.requested.is_set() else 0
        if stage <= self._forwarded:
            return
        if self._forwarded == 0:
            click.echo(GRACEFUL_MESSAGE, err=True)
        self._forwarded = stage
        grace = self.shutdown_timeout + EXIT_GRACE if stage == 1 else EXIT_GRACE
        self._kill_at = time.monotonic() + grace
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)

    def _reap(self, shutdown: Shutdown) -> None:
        for slot, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.children[slot]
            if self._forwarded or self.burst:
                self.is_failed |= code != 0
                continue
            pid = child.process.pid
            if time.monotonic() - child.started < MIN_UPTIME:
                logger.error(
                    "Worker process %d exited with status %d right after it started; "
                    "stopping the others. Its output above says why.",
                    pid,
                    code,
                )
                self.is_failed = True
                shutdown.requested.set()
            else:
                logger.warning("Worker process %d exited with status %d; restarting.", pid, code)
                self._start(slot)

    def _kill_all(self) -> None:
        for child in self.children.values():
            logger.error(
                "Worker process %d did not exit in time; killing it. Its running jobs "
                "run again once their lease expires.",
                child.process.pid,
            )
            child.process.kill()
        self._kill_at = None
