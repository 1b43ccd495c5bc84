"""Real ``flask --app tests.apps.jobs`` processes for tests, all stopped on close.

A :class:`Processes` is made per test (see the ``processes`` fixtures): every process
it starts writes its output to a log file in the test's directory, and ``close``
kills whatever still runs, so no test leaves a process behind even when it fails.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import typing as t

REPO = pathlib.Path(__file__).resolve().parents[2]


def wait_until(
    predicate: cabc.Callable[[], object], timeout: float = 10.0, what: str = "the condition"
) -> float:
    """Poll ``predicate`` (another process's doing) until true; return the seconds it took.

    :raises AssertionError: naming ``what`` if ``timeout`` ran out first.
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


class Process:
    """One started process and its log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: pathlib.Path) -> None:
        self.popen = popen
        self.log_path = log_path
        #: the port of a server started with :meth:`Processes.serve`
        self.port = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 15.0) -> float:
        """Wait until ``text`` is in the log; fail early, with the log, if the process died."""

        def logged() -> bool:
            if text in self.log():
                return True
            if self.popen.poll() is not None and text not in self.log():
                raise AssertionError(f"process exited ({self.popen.returncode}):\n{self.log()}")
            return False

        return wait_until(logged, timeout, f"{text!r} in {self.log_path.name}")

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; return its status."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process still runs after {timeout} s:\n{self.log()}") from None


class Processes:
    """Starts processes of ``tests.apps.jobs`` with one configuration; stops them all.

    :param out: the app's ``JOBS_OUT`` directory; logs go there too.
    :param config: ``AFTERWARD_*`` settings for every process, passed as
        ``JOBS_AFTERWARD_*``.
    """

    def __init__(self, out: pathlib.Path, **config: object) -> None:
        self.out = out
        self.config = config
        self.started: list[Process] = []

    def env(self, **config: object) -> dict[str, str]:
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": pythonpath, "JOBS_OUT": str(self.out)}
        env.pop("PYTHONWARNINGS", None)
        for key, value in {**self.config, **config}.items():
            env[f"JOBS_{key}"] = json.dumps(value)
        return env

    def _start(self, command: list[str], config: dict[str, object], **popen: t.Any) -> Process:
        log_path = self.out / f"process-{len(self.started)}.log"
        with open(log_path, "ab") as log:
            popen_ = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env(**config),
                stdout=log,
                stderr=subprocess.STDOUT,
                **popen,
            )
        process = Process(popen_, log_path)
        self.started.append(process)
        return process

    def flask(self, *args: str, **config: object) -> Process:
        """Start ``flask --app tests.apps.jobs ARGS``."""
        command = [sys.executable, "-m", "flask", "--app", "tests.apps.jobs", *args]
        return self._start(command, config)

    def worker(self, *args: str, ready: int = 1, **config: object) -> Process:
        """Start ``flask afterward worker ARGS``; wait until ``ready`` worker processes run."""
        process = self.flask("afterward", "worker", *args, **config)
        wait_until(
            lambda: process.log().count(" started: ") >= ready or process.popen.poll() is not None,
            30.0,
            f"{ready} worker processes to start",
        )
        assert process.popen.poll() is None, f"worker exited:\n{process.log()}"
        return process

    def run(self, *args: str, timeout: float = 30.0, **config: object) -> tuple[int, str]:
        """Run ``flask --app tests.apps.jobs ARGS`` to its end: (status, output)."""
        process = self.flask(*args, **config)
        return process.wait(timeout), process.log()

    def serve(self, **config: object) -> Process:
        """Serve the app with Werkzeug on an ephemeral port; wait until it answers."""
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            fd = listener.fileno()
            command = [sys.executable, "-m", "tests.apps.jobs_serve", str(fd)]
            process = self._start(command, config, pass_fds=[fd])
            process.port = listener.getsockname()[1]
        finally:
            listener.close()
        wait_until(lambda: _answers(process), 30.0, "the server to answer")
        return process

    def close(self) -> None:
        """Kill every process still running, their children first, and reap them all."""
        for process in self.started:
            if process.popen.poll() is None:
                for pid in children_of(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.popen.kill()
            process.popen.wait()


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s live children (``--processes`` workers), from ``/proc``."""
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _answers(process: Process) -> bool:
    if process.popen.poll() is not None:
        raise AssertionError(f"server exited ({process.popen.returncode}):\n{process.log()}")
    try:
        with socket.create_connection(("127.0.0.1", process.port), timeout=1) as sock:
            sock.sendall(b"GET /ready HTTP/1.0\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def store_url(tmp_path: pathlib.Path) -> str:
    """The job store every process of a test shares: one SQLite file under ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
