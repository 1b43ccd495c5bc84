"""The server matrix: flask-afterward's promises, checked on every server we support.

Each setup serves ``apps.matrix`` (every response defers a 2 s callback) on 127.0.0.1,
and a real client checks, with measured seconds: (a) the response arrives well before
the callback ends, (b) the next request on the kept-alive connection is not delayed,
(c) an HTTP/1.0 request (answer delimited by the server closing the connection),
(d) a streamed response is complete at the client, (e) a ``send_file`` response is
complete, (f) every callback ran. The table goes into ``docs/deployment.md``.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import getpass
import http.client
import pathlib
import re
import socket
import sys
import time

import apps
import harness
from harness import Benchmark

#: a response "well under" the 2 s callback
LIMIT = apps.LONG_WORK / 2
#: how many callbacks the checks defer: (a), (b), (c), (d) and (e) one each
CALLBACKS = 5
DEPLOYMENT_MD = harness.ROOT / "docs" / "deployment.md"


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    command: cabc.Callable[[int], list[str]]  #: the app server's command for a port
    nginx: str = ""  #: proxy lines for an nginx in front; empty: no nginx
    note: str = ""


def uwsgi(*options: str) -> cabc.Callable[[int], list[str]]:
    program = str(pathlib.Path(sys.executable).with_name("uwsgi"))

    def command(port: int) -> list[str]:
        return [
            *(program, "--http-socket", f"127.0.0.1:{port}", "--module", "wsgi:app"),
            *("--master", "--processes", "1", "--need-app", "--die-on-term"),
            *("--disable-logging", *options),
        ]

    return command


def gunicorn(worker: str) -> cabc.Callable[[int], list[str]]:
    return lambda port: harness.gunicorn(port, worker)


def waitress(port: int) -> list[str]:
    return [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=1"]


def werkzeug(port: int) -> list[str]:
    command = [sys.executable, "-m", "flask", "--app", "wsgi:app", "run"]
    return [*command, "--host", "127.0.0.1", "--port", str(port), "--no-reload"]


PROXY_10 = "# nginx defaults: proxy_http_version 1.0, no upstream keepalive"
PROXY_11 = 'proxy_http_version 1.1;\n            proxy_set_header Connection "";'

SETUPS = [
    Setup("gunicorn sync", gunicorn("sync")),
    Setup("gunicorn gthread", gunicorn("gthread")),
    Setup("gunicorn gevent", gunicorn("gevent")),
    Setup("waitress", lambda port: [*waitress(port), "wsgi:app"]),
    Setup("werkzeug dev server (`flask run`)", werkzeug),
    Setup("uWSGI `--http-socket`, no threads", uwsgi()),
    Setup("uWSGI `--http-socket --enable-threads`", uwsgi("--enable-threads")),
    Setup("nginx → gunicorn gthread, `proxy_http_version 1.0`", gunicorn("gthread"), PROXY_10),
    Setup("nginx → gunicorn gthread, 1.1 + keepalive", gunicorn("gthread"), PROXY_11),
]

NGINX_CONF = """\
user {user};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{
        server 127.0.0.1:{backend};
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            {proxy}
        }}
    }}
}}
"""


# --- the checks: each returns (seconds, note) ----------------------------------------


def get(connection: http.client.HTTPConnection, path: str) -> tuple[float, bytes, bool]:
    """Seconds until the whole response was read, the body, and whether the server
    kept the connection open."""
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return elapsed, body, not response.will_close


def check_answer(port: int) -> tuple[float, str]:
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        return get(conn, "/sleep")[0], ""


def check_keepalive(port: int) -> tuple[float, str]:
    """Like a client library would: reuse the connection, or retry on a new one once."""
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        _, _, kept = get(conn, "/sleep")
        note = "" if kept else "server closed the connection (`Connection: close`); new one"
        started = time.perf_counter()
        try:
            get(conn, "/fast")  # http.client reconnects if the server said it closes
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            get(conn, "/fast")
            note = "server dropped the kept-alive connection unannounced; retried on a new one"
    return time.perf_counter() - started, note


def check_http10(port: int) -> tuple[float, str]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /sleep HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    seconds = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"HTTP/1.0 GET /sleep: {answer[:200]!r}")
    if not answer.endswith(apps.HELLO.encode()):
        raise RuntimeError(f"HTTP/1.0 GET /sleep: incomplete body {answer[-200:]!r}")
    return seconds, ""


def check_stream(port: int) -> tuple[float, str]:
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        seconds, body, _ = get(conn, "/stream")
    if body != "".join(f"chunk {number}\n" for number in range(10)).encode():
        raise RuntimeError(f"GET /stream: incomplete body {body[-200:]!r}")
    return seconds, ""


def check_file(port: int) -> tuple[float, str]:
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        seconds, body, _ = get(conn, "/file")
    if len(body) != apps.PAYLOAD_SIZE:
        raise RuntimeError(f"GET /file: {len(body)} bytes, not {apps.PAYLOAD_SIZE}")
    return seconds, ""


CHECKS: list[tuple[str, cabc.Callable[[int], tuple[float, str]]]] = [
    ("(a) answered", check_answer),
    ("(b) next request, same connection", check_keepalive),
    ("(c) HTTP/1.0", check_http10),
    ("(d) streamed", check_stream),
    ("(e) `send_file`", check_file),
]


# --- running a setup ----------------------------------------------------------------


@contextlib.contextmanager
def serve(setup: Setup, workdir: pathlib.Path) -> cabc.Iterator[tuple[int, harness.Server]]:
    """Start the setup; yield the port the client talks to, and the app server."""
    port = harness.free_port()
    app_server = harness.Server(setup.command(port), "matrix", port, workdir, "/fast")
    with app_server:
        if not setup.nginx:
            yield port, app_server
            return
        front = harness.free_port()
        conf = workdir / "nginx.conf"
        keepalive = "keepalive 8;" if "1.1" in setup.nginx else ""
        conf.write_text(
            NGINX_CONF.format(
                user=getpass.getuser(),
                dir=workdir,
                backend=port,
                port=front,
                keepalive=keepalive,
                proxy=setup.nginx,
            )
        )
        nginx = ["nginx", "-e", str(workdir / "nginx-error.log"), "-p", str(workdir)]
        with harness.Server([*nginx, "-c", str(conf)], "matrix", front, workdir, "/fast"):
            yield front, app_server


def run_setup(setup: Setup, workdir: pathlib.Path) -> list[str]:
    """One table row: the setup, a cell per check, and notes."""
    cells = [setup.name]
    notes = []
    try:
        with serve(setup, workdir) as (port, app_server):
            for label, check in CHECKS:
                try:
                    seconds, note = check(port)
                except (OSError, RuntimeError, http.client.HTTPException) as error:
                    cells.append(f"error ✗: {error}"[:80])
                    continue
                cells.append(f"{seconds:.3f} s " + ("✓" if seconds < LIMIT else "✗"))
                if note:
                    notes.append(f"{label[:3]} {note}")
            started = time.perf_counter()
            ran = harness.count_effects(workdir, CALLBACKS, timeout=3 * apps.LONG_WORK)
            waited = time.perf_counter() - started
            mark = "✓" if ran == CALLBACKS else "✗"
            cells.append(f"{ran}/{CALLBACKS} {mark} (+{waited:.1f} s)")
            notes += log_notes(app_server.log_text())
    except (OSError, RuntimeError) as error:
        cells += ["not run"] * (len(CHECKS) + 1)
        notes.append(f"could not start: {str(error).splitlines()[0]}")
    return [*cells, "; ".join(notes) or "—"]


def log_notes(log: str) -> list[str]:
    notes = []
    warnings = log.count("uWSGI runs without --enable-threads")
    if warnings:
        notes.append(
            f"warned {'once' if warnings == 1 else f'{warnings} times'}: callbacks run inline"
        )
    if "Traceback" in log:
        error = re.search(r"^\w+(?:Error|Exception)\b.*$", log, re.MULTILINE)
        notes.append(f"server log: `{error.group() if error else 'Traceback'}`")
    return notes


def tools_line() -> str:
    return ", ".join(
        [
            f"gunicorn {harness.version('gunicorn')}",
            f"gevent {harness.version('gevent')}",
            f"waitress {harness.version('waitress')}",
            f"pyuwsgi {harness.version('pyuwsgi')}",
            harness.program_version(["nginx", "-v"]).replace("nginx version: ", ""),
        ]
    )


def run() -> str:
    rows = []
    with harness.workdir("matrix") as workdir:
        for number, setup in enumerate(SETUPS):
            rows.append(run_setup(setup, workdir / str(number)))
    header = ["setup", *(label for label, _ in CHECKS), "(f) callbacks ran", "notes"]
    return f"""\
{harness.machine(tools_line())} Generated by `bench/run.py server-matrix`.

Every request below defers a callback that sleeps {apps.LONG_WORK:.0f} s. Each cell gives the
seconds until the client had the whole response; ✓ means under {LIMIT:.0f} s, well before the
callback ends. (b) times a `GET` sent right after (a)'s response on the same
connection. (c) is a raw HTTP/1.0 request read until the server closes the connection.
(d) is a streamed (generator) response, (e) a 1 MiB `send_file` response.
(f) counts the callbacks' side effects after the checks, and how long we waited for them.
Every server runs **one** worker process with **one** thread where it has the option, so
that a worker tied up by a callback would show at once; the werkzeug dev server runs with
its default thread per request.

{harness.table(header, rows)}
"""


BENCHMARK = Benchmark(
    "server-matrix", run, doc=DEPLOYMENT_MD, title="Deployment", marker="matrix", tools=("nginx",)
)
