"""A real ``redis-server`` for the tests: one per session, on a free loopback port.

Not a fixture module: the contract suite and the tier-2 tests need the URL when they
are collected (it is a parameter), so the port is chosen at import and the server is
started on first use (:func:`server`); ``tests/conftest.py`` stops it at the end of
the session and gives each tier-2 test on Redis an empty database.

If Debian's ``redis-server`` is missing, :data:`AVAILABLE` is False and the Redis
cases are left out locally; under CI (``CI=true``) that is an error, as for pyuwsgi
(``tests/live/conftest.py``): CI must not silently skip them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

#: The redis-server binary, or None.
BINARY = shutil.which("redis-server")
#: Whether the Redis cases run.
AVAILABLE = BINARY is not None

if not AVAILABLE and os.environ.get("CI"):
    raise RuntimeError("CI must run the Redis tests: apt-get install -y redis-server.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: The port the session's server listens on.
PORT = free_port()
#: The session server's database 0, for tests that open a store by URL.
URL = f"redis://127.0.0.1:{PORT}/0"


class RedisServer:
    """One ``redis-server`` process with no persistence, its log in a temporary folder."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="afterward-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert BINARY is not None
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while not self.answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server did not answer on port {self.port}:\n"
                    + (self.folder / "redis.log").read_text(errors="replace")
                )
            time.sleep(0.02)

    def answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port: every job is gone (no persistence)."""
        self.stop()
        self.start()


#: The session's server once started: empty or one element.
_STARTED: list[RedisServer] = []


def server() -> RedisServer:
    """The session's server, started on first use."""
    if not _STARTED:
        started = RedisServer(PORT)
        started.start()
        _STARTED.append(started)
    return _STARTED[0]


def stop() -> None:
    """Stop the session's server if it was started."""
    while _STARTED:
        started = _STARTED.pop()
        started.stop()
        shutil.rmtree(started.folder, ignore_errors=True)


def unique_prefix() -> str:
    """A key prefix no other test uses: each store under test starts empty."""
    return f"test-{uuid.uuid4().hex[:12]}"
