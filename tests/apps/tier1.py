"""A tier-1 app for live-server tests: every callback leaves a file behind.

Run it with any WSGI server as ``tests.apps.tier1:create_app()``. The environment says
where side effects go and how flask-afterward is configured:

``TIER1_OUT``
    A directory. Callbacks write ``<token>.started`` and ``<token>.done`` there, the
    ``flask_afterward`` logger writes ``afterward.log``, and ``/file`` serves
    ``payload.bin`` from it.
``TIER1_AUDIT``
    When set, an ``@afterward.after_response`` hook appends one JSON line per response
    to ``responses.jsonl``.
``TIER1_AFTERWARD_*``
    Config keys, JSON-parsed (``TIER1_AFTERWARD_SHUTDOWN_TIMEOUT=0.2``), as Flask's
    ``from_prefixed_env`` reads them.

Files are written to a temporary name and renamed, so a test polling for a file never
reads half of one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import threading
import time

from flask import current_app
from flask import Flask
from flask import request
from flask import Response
from flask import send_file

from flask_afterward import after_this_response
from flask_afterward import Afterward
from flask_afterward import ResponseInfo

#: Bytes served by ``/hold/<token>/file``: large enough for a real sendfile.
PAYLOAD = bytes(range(256)) * 1024
#: The chunks of ``/hold/<token>/stream``.
STREAM_CHUNKS = [b"first\n", b"second\n", b"third\n"]

afterward = Afterward()

_holds: dict[str, threading.Event] = {}
_holds_lock = threading.Lock()


def create_app() -> Flask:
    out = pathlib.Path(os.environ["TIER1_OUT"])
    app = Flask(__name__, instance_path=str(out / "instance"))
    # Tier 1 only: no job store to open and no job workers polling beside the callbacks.
    app.config.update(AFTERWARD_STORE="memory://", AFTERWARD_WORKERS=0)
    app.config.from_prefixed_env("TIER1")
    app.config["TIER1_OUT"] = out
    (out / "payload.bin").write_bytes(PAYLOAD)
    _log_to(out / "afterward.log")
    afterward.init_app(app)
    if os.environ.get("TIER1_AUDIT"):
        afterward.after_response(audit)
    _add_routes(app)
    return app


def _add_routes(app: Flask) -> None:
    @app.get("/ready")
    def ready() -> str:
        return "ready\n"

    @app.get("/sleep/<token>")
    def sleep(token: str) -> str:
        seconds = request.args.get("seconds", 2.0, type=float)
        after_this_response(sleep_then_touch, _out(), token, seconds)
        return "deferred\n"

    @app.get("/hold/<token>/<shape>")
    def hold(token: str, shape: str) -> Response | str:
        after_this_response(hold_then_touch, _out(), token)
        if shape == "stream":
            return Response(iter(STREAM_CHUNKS), mimetype="text/plain")
        if shape == "file":
            return send_file(_out() / "payload.bin", mimetype="application/octet-stream")
        return "held\n"

    @app.get("/release/<token>")
    def release(token: str) -> str:
        _hold(token).set()
        return "released\n"

    @app.get("/fail/<token>")
    def fail(token: str) -> str:
        after_this_response(fail_after_touch, _out(), token)
        after_this_response(sleep_then_touch, _out(), f"{token}-next", 0.0)
        return "failing later\n"

    @app.get("/echo/<token>")
    def echo(token: str) -> tuple[str, int]:
        return token, 201


def sleep_then_touch(out: pathlib.Path, token: str, seconds: float) -> None:
    _write(out / f"{token}.started", threading.current_thread().name)
    time.sleep(seconds)
    _write(out / f"{token}.done", threading.current_thread().name)


def fail_after_touch(out: pathlib.Path, token: str) -> None:
    _write(out / f"{token}.started", threading.current_thread().name)
    raise RuntimeError(f"callback {token} failed on purpose")


def hold_then_touch(out: pathlib.Path, token: str) -> None:
    """Block until ``/release/<token>`` (or 30 s): the test decides when it ends."""
    _write(out / f"{token}.started", threading.current_thread().name)
    released = _hold(token).wait(timeout=30)
    _write(out / f"{token}.done", "released" if released else "timed out")


def audit(info: ResponseInfo) -> None:
    with open(_out() / "responses.jsonl", "a") as log:
        log.write(json.dumps(dataclasses.asdict(info)) + "\n")


def _out() -> pathlib.Path:
    out: pathlib.Path = current_app.config["TIER1_OUT"]
    return out


def _hold(token: str) -> threading.Event:
    with _holds_lock:
        return _holds.setdefault(token, threading.Event())


def _write(path: pathlib.Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _log_to(path: pathlib.Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("flask_afterward")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the server's own output stays apart, in server.log
