"""What every benchmark shares: servers as subprocesses, the machine, doc sections.

Every server runs in its own process group on 127.0.0.1 and a free port, with its log
in a temporary directory, and is stopped (group-wide, SIGTERM then SIGKILL) on exit.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import datetime
import http.client
import importlib.metadata
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One section of a doc, and the function that measures and writes its text."""

    name: str  #: the section name, also the ``bench/run.py NAME`` argument
    run: cabc.Callable[[], str]  #: returns the markdown between the markers
    doc: pathlib.Path = BENCHMARKS_MD
    title: str = "Benchmarks"  #: the doc's title, if the doc has to be created
    marker: str = ""  #: markers are ``<!-- {marker}:start -->``; default ``bench:{name}``
    tools: tuple[str, ...] = ()  #: programs it needs on PATH (installed with apt-get)


# --- servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gunicorn(port: int, worker: str = "sync", threads: int = 1) -> list[str]:
    """One gunicorn worker: the smallest setup, where a blocked worker shows at once."""
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", worker, "--threads", str(threads), "--log-level", "warning"]
    return [*command, "wsgi:app"]


@dataclasses.dataclass
class Server:
    """A server process serving ``wsgi:app`` (variant ``app``) from ``bench/``."""

    command: list[str]
    app: str
    port: int
    workdir: pathlib.Path
    ready_path: str = "/"
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> pathlib.Path:
        return self.workdir / f"server-{self.port}.log"

    def start(self, timeout: float = 20.0) -> None:
        (self.workdir / "effects").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "BENCH_APP": self.app, "BENCH_DIR": str(self.workdir)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=BENCH,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_ready(self.port, self.ready_path, timeout, self)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        stop_group(self.process, timeout)
        self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def gunicorns(
    stack: contextlib.ExitStack, apps: cabc.Iterable[str], workdir: pathlib.Path
) -> dict[str, Server]:
    """One started gunicorn (:func:`gunicorn`) per app variant, each in its own folder
    below ``workdir``; ``stack`` stops them."""
    servers = {}
    for app in apps:
        port = free_port()
        servers[app] = stack.enter_context(Server(gunicorn(port), app, port, workdir / app))
    return servers


def stop_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a server's threads have used so far: CPU seconds and context switches."""

    cpu: float  #: seconds on a CPU (the scheduler's exact count, not sampled ticks)
    switches: int  #: voluntary + involuntary context switches

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.cpu - other.cpu, self.switches - other.switches)


def usage(server: Server) -> Usage:
    """The :class:`Usage` of the live threads of every process in the server's group."""
    assert server.process is not None
    nanoseconds = switches = 0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) != server.process.pid:  # pgrp: the group the server leads
                continue
            for task in stat.parent.glob("task/*"):
                nanoseconds += int((task / "schedstat").read_text().split()[0])
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:  # voluntary_… and nonvoluntary_…
                        switches += int(line.split()[1])
    return Usage(nanoseconds / 1e9, switches)


def wait_until_ready(port: int, path: str, timeout: float, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server and server.process and server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            status = connection.getresponse().status
            connection.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    log = server.log_text()[-3000:] if server else ""
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s\n{log}")


@contextlib.contextmanager
def workdir(prefix: str) -> cabc.Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix=f"flask-afterward-{prefix}-") as path:
        yield pathlib.Path(path)


def count_effects(path: pathlib.Path, expected: int, timeout: float) -> int:
    """How many side effects are in ``path/effects``, waiting up to ``timeout`` for all."""
    deadline = time.monotonic() + timeout
    while True:
        count = len(os.listdir(path / "effects"))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


# --- reporting ----------------------------------------------------------------------


def median(values: cabc.Iterable[float]) -> float:
    return statistics.median(values)


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def program_version(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return (result.stdout or result.stderr).strip().splitlines()[0]


def source_revision() -> str:
    """The commit the measured code is at, and whether ``src/`` differs from it."""
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        changes = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True)
    except OSError:
        return "no git"
    revision = commit.stdout.decode().strip() or "no git"
    return f"{revision} + uncommitted changes in src/" if changes.stdout.strip() else revision


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(*extra: str) -> str:
    """One markdown paragraph: where and with what the numbers were measured."""
    parts = [
        f"{os.cpu_count()} CPUs ({cpu_model()})",
        f"Linux {platform.release()}",
        f"Python {platform.python_version()}",
        f"Flask {version('flask')}",
        f"Werkzeug {version('werkzeug')}",
        f"flask-afterward {version('flask-afterward')} ({source_revision()})",
        *extra,
    ]
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    return (
        f"Measured {today} on {', '.join(parts)}. "
        f"Load average at the start: {load:.2f} (the machine is shared)."
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(doc: pathlib.Path, marker: str, text: str, title: str) -> None:
    """Replace what lies between the markers in ``doc``; keep everything else.

    A missing doc is created with ``title``; missing markers are appended at the end.
    """
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    old = doc.read_text() if doc.exists() else f"# {title}\n"
    if start not in old or end not in old:
        old = f"{old.rstrip()}\n\n{start}\n{end}\n"
    head, rest = old.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")
