"""Real WSGI servers in subprocesses, after Werkzeug's ``DevServerClient``.

The parent binds a socket to an ephemeral port on 127.0.0.1 and hands the listening
file descriptor to the server, so there is no race for a port. The server's output goes
to ``server.log`` in its directory, which also receives the app's side effects (see
``tests.apps.tier1``). ``LiveServer`` is a context manager: on exit it terminates the
server and joins it, killing it if it does not stop.
"""

from __future__ import annotations

import collections.abc as cabc
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import typing as t

import requests

REPO = pathlib.Path(__file__).resolve().parents[2]

#: Every server the live tests run against.
SERVERS = ("werkzeug", "gunicorn-sync", "gunicorn-gthread", "waitress")
#: The servers that keep an HTTP/1.1 connection open between requests.
KEEP_ALIVE = frozenset({"gunicorn-gthread", "waitress"})
#: uWSGI's --http-socket closes every connection after the response without saying
#: so (no ``Connection: close``), and ends a stream by closing rather than chunking.
SILENT_CLOSE = frozenset({"uwsgi", "uwsgi-threads"})

_GUNICORN = [sys.executable, "-m", "gunicorn", "--workers", "1", "--graceful-timeout", "20"]
_GUNICORN_APP = "tests.apps.tier1:create_app()"


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a Python subprocess that imports ``tests.apps``."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


def wait_until(predicate: cabc.Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` ran out; for other processes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class RawResponse(t.NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    #: seconds from connecting to the server closing the connection
    elapsed: float


class LiveServer:
    """One server process running ``tests.apps.tier1``.

    :param kind: one of :data:`SERVERS`.
    :param out: the app's ``TIER1_OUT`` directory; the server log goes there too.
    :param config: ``AFTERWARD_*`` settings, passed as ``TIER1_AFTERWARD_*``.
    :param audit: register the app's ``after_response`` hook.
    """

    def __init__(
        self,
        kind: str,
        out: pathlib.Path,
        *,
        audit: bool = False,
        config: cabc.Mapping[str, object] | None = None,
    ) -> None:
        self.kind = kind
        self.out = out
        self.log_path = out / "server.log"
        self.env = python_env(TIER1_OUT=str(out))
        if audit:
            self.env["TIER1_AUDIT"] = "1"
        for key, value in (config or {}).items():
            self.env[f"TIER1_{key}"] = json.dumps(value)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LiveServer:
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            fd = listener.fileno()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self._command(fd),
                    cwd=REPO,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=[fd],
                )
        finally:
            listener.close()  # the child has its own copy now
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _command(self, fd: int) -> list[str]:
        if self.kind in ("werkzeug", "waitress"):
            return [sys.executable, "-m", "tests.apps.serve", self.kind, str(fd)]
        bind = ["--bind", f"fd://{fd}"]
        if self.kind == "gunicorn-sync":
            # --preload: the app is created in the arbiter, before the fork.
            return [*_GUNICORN, *bind, "--worker-class", "sync", "--preload", _GUNICORN_APP]
        if self.kind == "gunicorn-gthread":
            return [*_GUNICORN, *bind, "--worker-class", "gthread", "--threads", "4", _GUNICORN_APP]
        if self.kind in ("uwsgi", "uwsgi-threads"):
            uwsgi = os.path.join(os.path.dirname(sys.executable), "uwsgi")
            threads = ["--enable-threads"] if self.kind == "uwsgi-threads" else []
            return [
                *(uwsgi, "--http-socket", f"fd://{fd}", "--module", "tests.apps.tier1_wsgi"),
                *("--master", "--workers", "1", "--die-on-term", "--need-app", *threads),
            ]
        raise ValueError(f"unknown server {self.kind!r}")

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
            try:
                if requests.get(self.url("/ready"), timeout=1).ok:
                    return
            except requests.RequestException:
                pass
        raise RuntimeError(f"{self.kind} was not ready in {timeout} s:\n{self.log()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def app_log(self) -> str:
        """What the ``flask_afterward`` logger wrote."""
        path = self.out / "afterward.log"
        return path.read_text() if path.exists() else ""

    def signal_and_wait(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``signum`` and return the exit code; fail if the server does not exit."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def get(self, path: str) -> tuple[requests.Response, float]:
        """GET on a new connection; also returns seconds until the body was read."""
        started = time.perf_counter()
        response = requests.get(self.url(path), timeout=10)
        return response, time.perf_counter() - started

    def get_http10(self, path: str) -> RawResponse:
        """An HTTP/1.0 GET, read until the server closes the connection."""
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
            data = b"".join(iter(lambda: sock.recv(65536), b""))
        elapsed = time.perf_counter() - started
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = _dechunk(body)
        return RawResponse(int(status_line.split()[1]), headers, body, elapsed)


def _dechunk(data: bytes) -> bytes:
    # The Werkzeug dev server chunks a stream even for an HTTP/1.0 client.
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]
