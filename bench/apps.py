"""The Flask apps the benchmarks serve: one factory per variant.

Deferred work leaves a side effect, one new file in ``$BENCH_DIR/effects``, so a
benchmark can count that every unit of work ran. The servers import ``wsgi.py``, which
calls :func:`create_app` with ``$BENCH_APP``.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pathlib
import threading
import time
import traceback
import typing as t
import uuid

from flask import Flask
from flask import send_file
from werkzeug.wsgi import ClosingIterator

from flask_afterward import after_this_response
from flask_afterward import Afterward

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

HELLO = "Hello, World!"
#: seconds of deferred work per request in the worker-freedom benchmark
SHORT_WORK = 0.2
#: seconds a server-matrix callback sleeps
LONG_WORK = 2.0
PAYLOAD_SIZE = 1024 * 1024


def bench_dir() -> pathlib.Path:
    return pathlib.Path(os.environ["BENCH_DIR"])


def effects_dir() -> pathlib.Path:
    return bench_dir() / "effects"


def leave_effect(tag: str) -> None:
    """One side effect: a new, uniquely named file."""
    (effects_dir() / f"{tag}-{uuid.uuid4().hex}").touch()


def work(seconds: float = SHORT_WORK, tag: str = "work") -> None:
    time.sleep(seconds)
    leave_effect(tag)


def noop() -> None:
    pass


def new_app() -> Flask:
    """A Flask app whose instance folder (the job store's SQLite file) is in ``$BENCH_DIR``."""
    return Flask(__name__, instance_path=str(bench_dir() / "instance"))


# --- tier-1 overhead: hello world, three ways ---------------------------------------


def plain() -> Flask:
    app = new_app()
    app.add_url_rule("/", "hello", lambda: HELLO)
    return app


def bare_wsgi() -> Flask:
    """Diagnostic: the same response from a bare WSGI callable, with Flask bypassed.

    Served through ``Flask.__call__`` only so that every variant is a Flask object; the
    difference to :func:`plain` is what Flask itself costs per request in the server.
    """
    app = new_app()

    def hello(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        body = HELLO.encode()
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    app.wsgi_app = hello  # type: ignore[method-assign]
    return app


def unused() -> Flask:
    app = plain()
    Afterward(app)
    return app


def hello_with_noop() -> str:
    after_this_response(noop)
    return HELLO


def one_noop() -> Flask:
    app = new_app()
    Afterward(app)
    app.add_url_rule("/", "hello", hello_with_noop)
    return app


def one_noop_inline() -> Flask:
    """Diagnostic: the same callback, run inline by the worker (``close()`` stops the pool).

    Compared with :func:`one_noop`, it separates what the callback's own work costs from
    what handing it to a pool thread costs.
    """
    app = new_app()
    Afterward(app).close(app, timeout=0)
    app.add_url_rule("/", "hello", hello_with_noop)
    return app


# --- worker freedom: 200 ms of deferred work per request, four ways -----------------


def defer_afterward() -> Flask:
    app = new_app()
    Afterward(app)

    @app.get("/")
    def hello() -> str:
        after_this_response(work)
        return HELLO

    return app


class AfterResponse:
    """The popular recipe: ``@app.after_response`` functions run on WSGI ``close()``.

    Faithful to the widely copied Stack Overflow answer: a global list, a middleware
    returning ``werkzeug.wsgi.ClosingIterator``, every function after every request.
    """

    def __init__(self, app: Flask) -> None:
        self.callbacks: list[cabc.Callable[[], object]] = []
        app.wsgi_app = AfterResponseMiddleware(app.wsgi_app, self)  # type: ignore[method-assign]

    def __call__(self, callback: cabc.Callable[[], object]) -> cabc.Callable[[], object]:
        self.callbacks.append(callback)
        return callback

    def flush(self) -> None:
        for fn in self.callbacks:
            try:
                fn()
            except Exception:
                traceback.print_exc()


class AfterResponseMiddleware:
    def __init__(self, application: WSGIApplication, after_response: AfterResponse) -> None:
        self.application = application
        self.after_response = after_response

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> cabc.Iterable[bytes]:
        iterator = self.application(environ, start_response)
        try:
            return ClosingIterator(iterator, [self.after_response.flush])
        except Exception:
            traceback.print_exc()
            return iterator


def defer_closing_iterator() -> Flask:
    app = plain()
    AfterResponse(app)(work)
    return app


def defer_thread() -> Flask:
    app = new_app()

    @app.get("/")
    def hello() -> str:
        threading.Thread(target=work).start()
        return HELLO

    return app


def defer_nothing() -> Flask:
    return plain()


# --- server matrix: every kind of response, each with a 2 s callback ----------------


def matrix() -> Flask:
    app = new_app()
    Afterward(app)
    payload = bench_dir() / "payload.bin"
    if not payload.exists():
        payload.write_bytes(os.urandom(PAYLOAD_SIZE))

    @app.get("/sleep")
    def sleep() -> str:
        after_this_response(work, LONG_WORK, "sleep")
        return HELLO

    @app.get("/fast")
    def fast() -> str:
        return HELLO

    @app.get("/stream")
    def stream() -> cabc.Iterator[str]:
        after_this_response(work, LONG_WORK, "stream")
        return (f"chunk {number}\n" for number in range(10))

    @app.get("/file")
    def file() -> t.Any:
        after_this_response(work, LONG_WORK, "file")
        return send_file(payload, mimetype="application/octet-stream")

    return app


FACTORIES: dict[str, cabc.Callable[[], Flask]] = {
    "plain": plain,
    "bare-wsgi": bare_wsgi,
    "unused": unused,
    "noop": one_noop,
    "noop-inline": one_noop_inline,
    "defer-afterward": defer_afterward,
    "defer-closing-iterator": defer_closing_iterator,
    "defer-thread": defer_thread,
    "defer-nothing": defer_nothing,
    "matrix": matrix,
}


def create_app(variant: str) -> Flask:
    return FACTORIES[variant]()
