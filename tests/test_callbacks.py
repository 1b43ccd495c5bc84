"""Tier 1 with the test client: scheduling, order, isolation, errors, pool, fork.

The Werkzeug test client closes a response (and so hands its callbacks over) only
with ``buffered=True`` or ``with client.get(...)``. None of this proves the client did
not wait; ``tests/live`` does, with real servers.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import io
import json
import logging
import os
import sys
import threading
import time
import types
import typing as t

import pytest
from flask import abort
from flask import Flask
from flask import Response
from flask import send_file
from flask import stream_with_context
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder

from flask_afterward import after_this_response
from flask_afterward import Afterward
from flask_afterward import ResponseInfo
from flask_afterward.errors import NotInitialized
from flask_afterward.errors import OutsideRequest
from flask_afterward.signals import callback_failed

CALLBACK_THREAD = "flask-afterward-callback-"


class Boom(Exception):
    pass


@pytest.fixture
def client(app: Flask, afterward: Afterward) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def configured(app: Flask) -> cabc.Iterator[cabc.Callable[..., Afterward]]:
    """``configured(AFTERWARD_X=…)``: set config, then register; closed after the test."""
    made: list[Afterward] = []

    def configure(**config: object) -> Afterward:
        app.config.update(config)
        made.append(Afterward(app))
        return made[-1]

    yield configure
    for afterward in made:
        afterward.close(app, timeout=5)


def test_callback_runs_with_its_arguments_after_the_response(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    calls: list[tuple[int, str, bool, str]] = []
    ran = threading.Event()

    def record(a: int, b: str, *, c: bool) -> None:
        calls.append((a, b, c, threading.current_thread().name))
        ran.set()

    @app.get("/")
    def index() -> str:
        after_this_response(record, 1, "two", c=True)
        return "ok"

    response = client.get("/", buffered=True)

    assert response.text == "ok"
    assert ran.wait(timeout=5)
    [(a, b, c, thread)] = calls
    assert (a, b, c) == (1, "two", True)
    assert thread.startswith(CALLBACK_THREAD)


def test_callbacks_wait_for_the_response_to_be_closed(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    ran = threading.Event()

    @app.get("/")
    def index() -> str:
        after_this_response(ran.set)
        return "ok"

    # Given a response the client has not closed yet
    response = client.get("/")
    assert response.text == "ok"
    assert afterward.wait_for_callbacks(timeout=0, app=app)  # nothing handed over
    assert not ran.is_set()

    # When it is closed, the callbacks go to the pool
    response.close()
    assert ran.wait(timeout=5)


def test_callbacks_run_when_a_with_block_closes_the_response(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    ran = threading.Event()

    @app.get("/")
    def index() -> str:
        after_this_response(ran.set)
        return "ok"

    with client.get("/") as response:
        assert response.data == b"ok"
        assert not ran.is_set()
    assert ran.wait(timeout=5)


def test_outside_a_request_raises_outside_request(app: Flask, afterward: Afterward) -> None:
    with pytest.raises(OutsideRequest, match="outside of a request"):
        after_this_response(print)
    with app.app_context(), pytest.raises(RuntimeError):  # OutsideRequest is one
        after_this_response(print)


def test_without_init_app_raises_not_initialized(tmp_path: t.Any) -> None:
    bare = Flask("bare")
    with bare.test_request_context("/"):
        with pytest.raises(NotInitialized, match="init_app") as raised:
            after_this_response(print)
    assert isinstance(raised.value, RuntimeError)
    with pytest.raises(NotInitialized, match="init_app"):
        Afterward().wait_for_callbacks(app=bare)


def test_async_callbacks_are_awaited(app: Flask, afterward: Afterward, client: FlaskClient) -> None:
    seen: list[tuple[int, str]] = []

    async def notify(value: int) -> None:
        await asyncio.sleep(0)
        seen.append((value, threading.current_thread().name))

    @app.get("/")
    def index() -> str:
        after_this_response(notify, 42)
        return "ok"

    client.get("/", buffered=True)

    assert afterward.wait_for_callbacks(timeout=5, app=app) is True
    [(value, thread)] = seen
    assert value == 42
    assert thread.startswith(CALLBACK_THREAD)


def test_callbacks_of_a_request_run_in_registration_order_before_hooks(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    order: list[str] = []

    @afterward.after_response
    def hook(info: ResponseInfo) -> None:
        order.append("hook")

    @app.get("/")
    def index() -> str:
        for number in range(6):  # more than the 4 threads
            after_this_response(order.append, f"callback {number}")
        return "ok"

    client.get("/", buffered=True)

    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert order == [f"callback {number}" for number in range(6)] + ["hook"]


def test_callback_failure_does_not_stop_others(
    app: Flask, afterward: Afterward, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    failures: list[tuple[object, dict[str, t.Any]]] = []

    def explode() -> None:
        raise Boom("broken callback")

    def receiver(sender: object, **extra: t.Any) -> None:
        failures.append((sender, extra))

    @app.get("/")
    def index() -> str:
        after_this_response(ran.append, "first")
        after_this_response(explode)
        after_this_response(ran.append, "last")
        return "ok"

    with callback_failed.connected_to(receiver):
        response = client.get("/", buffered=True)
        assert afterward.wait_for_callbacks(timeout=5, app=app)

    # The client got its answer and the other callbacks ran
    assert response.status_code == 200
    assert ran == ["first", "last"]
    # The failure was signalled with the app, the function and the exception
    [(sender, extra)] = failures
    assert sender is app
    assert extra["callback"] is explode
    assert isinstance(extra["exception"], Boom)
    # And logged with its traceback on a flask_afterward logger, naming the function
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name.startswith("flask_afterward")
    assert "explode" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is Boom


def test_a_failing_signal_receiver_does_not_stop_the_next_callback(
    app: Flask, afterward: Afterward, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def bad_receiver(sender: object, **extra: object) -> None:
        raise Boom("broken receiver")

    def explode() -> None:
        raise Boom("broken callback")

    @app.get("/")
    def index() -> str:
        after_this_response(explode)
        after_this_response(ran.append, "next")
        return "ok"

    with callback_failed.connected_to(bad_receiver):
        client.get("/", buffered=True)
        assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert ran == ["next"]
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("receiver" in message for message in messages)


def test_unhandled_exception_drops_the_requests_callbacks(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False
    dropped: list[str] = []
    infos: list[ResponseInfo] = []
    afterward.after_response(infos.append)

    @app.get("/")
    def index() -> str:
        after_this_response(dropped.append, "should not run")
        raise Boom("unhandled")

    response = client.get("/", buffered=True)

    assert response.status_code == 500
    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert dropped == []
    # every-response hooks still run, so they can audit the failure
    [info] = infos
    assert info.status_code == 500


def test_exception_propagated_to_the_test_client_drops_callbacks_too(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    dropped: list[str] = []
    infos: list[ResponseInfo] = []
    afterward.after_response(infos.append)

    @app.get("/")
    def index() -> str:
        after_this_response(dropped.append, "should not run")
        raise Boom("unhandled")

    with pytest.raises(Boom):  # TESTING propagates exceptions: no response at all
        client.get("/", buffered=True)

    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert dropped == []
    [info] = infos
    assert info.status_code is None


class Handled(Exception):
    pass


@pytest.mark.parametrize(
    ("path", "status"),
    [("/abort", 404), ("/handled", 418), ("/caught-by-exception-handler", 409)],
)
def test_handled_errors_keep_the_requests_callbacks(
    app: Flask, afterward: Afterward, client: FlaskClient, path: str, status: int
) -> None:
    ran = threading.Event()

    @app.errorhandler(Handled)
    def handled(error: Handled) -> tuple[str, int]:
        return "handled", 418

    @app.errorhandler(LookupError)
    def lookup(error: LookupError) -> tuple[str, int]:
        return "conflict", 409

    @app.get("/abort")
    def aborts() -> str:
        after_this_response(ran.set)
        abort(404)

    @app.get("/handled")
    def raises_handled() -> str:
        after_this_response(ran.set)
        raise Handled()

    @app.get("/caught-by-exception-handler")
    def raises_lookup() -> str:
        after_this_response(ran.set)
        raise KeyError("missing")

    response = client.get(path, buffered=True)

    assert response.status_code == status
    assert ran.wait(timeout=5)


def test_after_response_hook_gets_response_info(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    infos: list[ResponseInfo] = []

    @afterward.after_response
    def audit(info: ResponseInfo) -> None:
        infos.append(info)

    @app.post("/items/<int:item>")
    def create(item: int) -> tuple[str, int]:
        time.sleep(0.05)  # the view takes a known minimum time
        return "created", 201

    client.post("/items/7?verbose=1", buffered=True, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    client.get("/nowhere", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    created, missing = infos
    assert created.method == "POST"
    assert created.path == "/items/7"
    assert created.endpoint == "create"
    assert created.status_code == 201
    assert created.remote_addr == "203.0.113.9"
    assert 0.05 <= created.duration < 5
    # A request no route matched is reported too
    assert (missing.method, missing.path, missing.endpoint) == ("GET", "/nowhere", None)
    assert missing.status_code == 404
    with pytest.raises(AttributeError):
        created.status_code = 200  # type: ignore[misc]


def test_hook_added_after_init_app_runs_for_every_response(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    @app.get("/")
    def index() -> str:
        return "ok"  # registers no callback of its own

    client.get("/", buffered=True)  # before any hook
    paths: list[str] = []
    afterward.after_response(lambda info: paths.append(info.path))

    client.get("/", buffered=True)
    client.get("/?again", buffered=True)

    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert paths == ["/", "/"]


def test_after_this_response_inside_a_callback_runs_it_too(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    ran = threading.Event()

    def first() -> None:
        after_this_response(ran.set)

    @app.get("/")
    def index() -> str:
        after_this_response(first)
        return "ok"

    client.get("/", buffered=True)
    assert ran.wait(timeout=5)


def test_callback_threads_are_named_and_bounded(
    app: Flask, configured: cabc.Callable[..., Afterward]
) -> None:
    afterward = configured(AFTERWARD_CALLBACK_THREADS=2)
    client = app.test_client()
    together = threading.Barrier(2, timeout=5)
    names: set[str] = set()

    def meet() -> None:
        together.wait()  # both run at once, so on two different threads
        names.add(threading.current_thread().name)

    @app.get("/")
    def index() -> str:
        after_this_response(meet)
        return "ok"

    client.get("/", buffered=True)
    client.get("/", buffered=True)

    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert names == {f"{CALLBACK_THREAD}1", f"{CALLBACK_THREAD}2"}


def test_full_pool_runs_callbacks_inline_and_drops_nothing(
    app: Flask, configured: cabc.Callable[..., Afterward], caplog: pytest.LogCaptureFixture
) -> None:
    afterward = configured(AFTERWARD_CALLBACK_THREADS=1, AFTERWARD_MAX_PENDING_CALLBACKS=1)
    client = app.test_client()
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocked() -> None:
        started.set()
        release.wait(timeout=10)
        ran.append("blocked")

    @app.get("/block")
    def block() -> str:
        after_this_response(blocked)
        return "ok"

    @app.get("/next")
    def next_() -> str:
        after_this_response(lambda: ran.append(threading.current_thread().name))
        return "ok"

    # Given the one pending slot is taken by a callback that cannot finish yet
    client.get("/block", buffered=True)
    assert started.wait(timeout=5)

    # When another response is closed, its callback runs right there, in the closer
    client.get("/next", buffered=True)
    assert ran == [threading.current_thread().name]
    assert any("inline" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    # And once the pool catches up, callbacks go to it again
    release.set()
    assert afterward.wait_for_callbacks(timeout=5, app=app)
    client.get("/next", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert ran[1] == "blocked"
    assert ran[2].startswith(CALLBACK_THREAD)


def test_wait_for_callbacks_times_out_while_work_is_pending(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    release = threading.Event()

    @app.get("/")
    def index() -> str:
        after_this_response(release.wait, 10)
        return "ok"

    client.get("/", buffered=True)

    assert afterward.wait_for_callbacks(timeout=0.1, app=app) is False
    release.set()
    assert afterward.wait_for_callbacks(timeout=5, app=app) is True


def test_close_counts_and_logs_callbacks_that_did_not_finish(
    app: Flask, afterward: Afterward, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    started, release = threading.Event(), threading.Event()

    def blocked() -> None:
        started.set()
        release.wait(timeout=10)

    @app.get("/")
    def index() -> str:
        after_this_response(blocked)
        return "ok"

    client.get("/", buffered=True)
    assert started.wait(timeout=5)

    try:
        assert afterward.close(app, timeout=0.1) == 1
    finally:
        release.set()
    [record] = [r for r in caplog.records if "did not finish" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.name.startswith("flask_afterward")
    assert record.getMessage().startswith("1 after-response callbacks")


def test_after_close_callbacks_run_inline(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    threads: list[str] = []

    @app.get("/")
    def index() -> str:
        after_this_response(lambda: threads.append(threading.current_thread().name))
        return "ok"

    assert afterward.close(app, timeout=5) == 0
    client.get("/", buffered=True)

    assert threads == [threading.current_thread().name]


class ServerFileWrapper:
    """A server's ``wsgi.file_wrapper``: servers test ``isinstance`` to use sendfile."""

    def __init__(self, filelike: t.Any, block_size: int = 8192) -> None:
        self.filelike = filelike

    def __iter__(self) -> ServerFileWrapper:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(8192)
        if not data:
            raise StopIteration
        return data

    def close(self) -> None:
        self.filelike.close()


def call_wsgi(app: Flask, environ: dict[str, t.Any]) -> tuple[str, t.Any]:
    """Call ``app`` as a server would; return the status line and the iterable."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: t.Any = None) -> t.Any:
        statuses.append(status)

    result = app(environ, start_response)
    return statuses[0], result


def test_send_file_keeps_the_servers_file_wrapper(
    app: Flask, afterward: Afterward, tmp_path: t.Any
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 100_000)
    ran = threading.Event()

    @app.get("/file")
    def download() -> Response:
        after_this_response(ran.set)
        return send_file(path)

    environ = EnvironBuilder(path="/file").get_environ()
    environ["wsgi.file_wrapper"] = ServerFileWrapper

    status, result = call_wsgi(app, environ)

    # The server gets its own wrapper back, around a file it can sendfile from
    assert environ["wsgi.file_wrapper"] is ServerFileWrapper
    assert isinstance(result, ServerFileWrapper)
    with open(path, "rb") as real:
        assert os.path.sameopenfile(result.filelike.fileno(), real.fileno())
    assert status == "200 OK"
    assert b"".join(result) == path.read_bytes()
    assert not ran.is_set()
    # and closing it is what hands the callbacks over
    result.close()
    assert ran.wait(timeout=5)


@pytest.mark.parametrize(
    ("method", "headers", "status", "body"),
    [
        ("GET", {"Range": "bytes=10-19"}, "206 PARTIAL CONTENT", b"0123456789"),
        ("GET", {"If-None-Match": "*"}, "304 NOT MODIFIED", b""),
        ("HEAD", {}, "200 OK", b""),
    ],
)
def test_conditional_and_partial_file_responses_deliver_once(
    app: Flask,
    afterward: Afterward,
    tmp_path: t.Any,
    method: str,
    headers: dict[str, str],
    status: str,
    body: bytes,
) -> None:
    # Werkzeug answers these without handing the server its file wrapper, but the file
    # wrapper was made (and is closed), so both close() hooks fire: only one counts.
    path = tmp_path / "data.txt"
    path.write_bytes(b"0123456789" * 3)
    runs: list[str] = []

    @app.route("/file", methods=["GET", "HEAD"])
    def download() -> Response:
        after_this_response(runs.append, "callback")
        return send_file(path, etag=True)

    environ = EnvironBuilder(
        path="/file", method=method, headers=list(headers.items())
    ).get_environ()
    environ["wsgi.file_wrapper"] = ServerFileWrapper

    got_status, result = call_wsgi(app, environ)
    assert got_status == status
    assert b"".join(result) == body
    result.close()

    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert runs == ["callback"]


def test_send_file_through_the_test_client(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    ran = threading.Event()

    @app.get("/file")
    def download() -> Response:
        after_this_response(ran.set)
        return send_file(io.BytesIO(b"data"), mimetype="text/plain")

    assert client.get("/file", buffered=True).data == b"data"
    assert ran.wait(timeout=5)


def test_callback_added_while_streaming_runs_after_the_stream(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    events: list[str] = []

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> cabc.Iterator[str]:
            yield "a"
            after_this_response(events.append, "callback")
            events.append("streamed")
            yield "b"

        return Response(stream_with_context(generate()))

    response = client.get("/stream", buffered=True)

    assert response.data == b"ab"
    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert events == ["streamed", "callback"]


def test_each_app_runs_its_callbacks_in_its_own_context(tmp_path: t.Any) -> None:
    afterward = Afterward()
    apps = [Flask(name, instance_path=str(tmp_path / name)) for name in ("one", "two")]
    seen: list[str] = []
    for app in apps:
        app.config["AFTERWARD_STORE"] = "memory://"
        afterward.init_app(app)

        @app.get("/")
        def index() -> str:
            from flask import current_app

            after_this_response(lambda: seen.append(current_app.name))
            return "ok"

    try:
        for app in apps:
            app.test_client().get("/", buffered=True)
            assert afterward.wait_for_callbacks(timeout=5, app=app)
    finally:
        for app in apps:
            afterward.close(app, timeout=5)
    assert seen == ["one", "two"]
    assert apps[0].extensions["afterward"] is not apps[1].extensions["afterward"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_starts_its_own_pool(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    runs: list[tuple[int, str]] = []

    @app.get("/")
    def index() -> str:
        after_this_response(lambda: runs.append((os.getpid(), threading.current_thread().name)))
        return "ok"

    # Given a parent whose pool threads are running
    client.get("/", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert runs[0][0] == os.getpid()

    # When a forked child serves a request (gunicorn --preload after a warm-up)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = 1
        try:
            runs.clear()
            app.test_client().get("/", buffered=True)
            idle = afterward.wait_for_callbacks(timeout=5, app=app)
            os.write(write_end, json.dumps({"idle": idle, "runs": runs}).encode())
            status = 0
        except BaseException as error:
            os.write(write_end, json.dumps({"error": repr(error)}).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)

    # Then the child ran the callback on a pool of its own
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report["idle"] is True
    [[child_pid, thread]] = report["runs"]
    assert child_pid == pid
    assert thread.startswith(CALLBACK_THREAD)


def test_uwsgi_without_threads_runs_callbacks_inline_and_warns_once(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(opt={}))
    afterward = Afterward(app)
    threads: list[str] = []

    @app.get("/")
    def index() -> str:
        after_this_response(lambda: threads.append(threading.current_thread().name))
        return "ok"

    client = app.test_client()
    client.get("/", buffered=True)
    client.get("/", buffered=True)

    assert threads == [threading.current_thread().name] * 2
    warnings = [r for r in caplog.records if "enable-threads" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert afterward.wait_for_callbacks(timeout=0, app=app)


def test_uwsgi_with_threads_uses_the_pool(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(opt={"enable-threads": True}))
    afterward = Afterward(app)
    threads: list[str] = []

    @app.get("/")
    def index() -> str:
        after_this_response(lambda: threads.append(threading.current_thread().name))
        return "ok"

    try:
        app.test_client().get("/", buffered=True)
        assert afterward.wait_for_callbacks(timeout=5, app=app)
    finally:
        afterward.close(app, timeout=5)
    assert threads[0].startswith(CALLBACK_THREAD)
    assert not [r for r in caplog.records if "enable-threads" in r.getMessage()]
