"""Callbacks run in an app context and a copy of their request's context.

Directly through :class:`CapturedContext`, and end to end through
``after_this_response``, including an extension that relies on teardown
(Flask-SQLAlchemy).
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import pathlib
import threading
import typing as t

import pytest
import sqlalchemy as sa
from flask import current_app
from flask import Flask
from flask import g
from flask import has_request_context
from flask import request
from flask import session
from flask import url_for
from flask.testing import FlaskClient
from flask_login import current_user
from flask_login import login_user
from flask_login import LoginManager
from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.test import EnvironBuilder

from flask_afterward import after_this_response
from flask_afterward import Afterward
from flask_afterward.context import CapturedContext

CALLBACK_THREAD = "flask-afterward-callback-"


@pytest.fixture
def client(app: Flask, afterward: Afterward) -> FlaskClient:
    return app.test_client()


def in_thread(fn: cabc.Callable[[], object]) -> object:
    """Run ``fn`` on a fresh thread and return its result (or raise its exception)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()
    if "error" in outcome:
        raise t.cast(BaseException, outcome["error"])
    return outcome["value"]


def test_capture_needs_an_app_context() -> None:
    with pytest.raises(RuntimeError, match="application context"):
        CapturedContext.capture()


def test_capture_without_a_request_keeps_the_app_and_a_copy_of_g(app: Flask) -> None:
    with app.app_context():
        g.user = "ada"
        captured = CapturedContext.capture()
        g.user = "changed after the capture"

    assert captured.request is None

    def inside() -> tuple[object, object, bool]:
        return captured.run(lambda: (current_app.name, g.user, has_request_context()))

    assert in_thread(inside) == (app.name, "ada", False)


def test_each_entry_starts_from_the_captured_g(app: Flask) -> None:
    with app.app_context():
        g.count = 0
        captured = CapturedContext.capture()

    def increment() -> object:
        g.count += 1
        return g.count

    def bump() -> object:
        return captured.run(increment)

    assert in_thread(bump) == 1
    assert in_thread(bump) == 1  # changes made inside do not leak into the snapshot


def test_captured_request_is_readable_in_another_thread(app: Flask) -> None:
    with app.test_request_context(
        "/search?q=flask", method="POST", data={"name": "ada"}, headers={"X-Trace": "t1"}
    ):
        assert request.form["name"] == "ada"  # the view read the body
        session["user"] = "ada"
        captured = CapturedContext.capture()

    def read() -> tuple[object, ...]:
        return (
            request.path,
            request.args["q"],
            request.headers["X-Trace"],
            request.form["name"],
            session["user"],
        )

    def inside() -> tuple[object, ...]:
        return captured.run(read)

    assert in_thread(inside) == ("/search", "flask", "t1", "ada", "ada")


def test_callback_sees_request_session_g_and_app(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    seen: dict[str, object] = {}

    def inspect() -> None:
        seen.update(
            app=current_app._get_current_object(),  # type: ignore[attr-defined]
            method=request.method,
            path=request.path,
            args=request.args.to_dict(),
            header=request.headers.get("X-Trace"),
            form=request.form.to_dict(),
            user=session.get("user"),
            g_user=g.get("user"),
            url=url_for("submit"),
            thread=threading.current_thread().name,
        )

    @app.post("/submit")
    def submit() -> str:
        request.form.get("name")
        session["user"] = "ada"
        g.user = "ada from g"
        after_this_response(inspect)
        return "ok"

    client.post("/submit?page=2", data={"name": "ada"}, headers={"X-Trace": "t1"}, buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert seen == {
        "app": app,
        "method": "POST",
        "path": "/submit",
        "args": {"page": "2"},
        "header": "t1",
        "form": {"name": "ada"},
        "user": "ada",
        "g_user": "ada from g",
        "url": "/submit",
        "thread": seen["thread"],
    }
    assert str(seen["thread"]).startswith(CALLBACK_THREAD)


def test_callback_reads_the_json_the_view_read(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    seen: list[object] = []

    @app.post("/api")
    def api() -> str:
        assert request.get_json()["id"] == 7
        after_this_response(lambda: seen.append(request.get_json()))
        return "ok"

    client.post("/api", json={"id": 7, "tags": ["a"]}, buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert seen == [{"id": 7, "tags": ["a"]}]


def test_teardown_functions_run_after_the_callback(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    events: list[str] = []

    def where() -> str:
        name = threading.current_thread().name
        return "callback thread" if name.startswith(CALLBACK_THREAD) else "request thread"

    @app.teardown_request
    def teardown_request(error: BaseException | None) -> None:
        events.append(f"teardown_request in {where()}")

    @app.teardown_appcontext
    def teardown_appcontext(error: BaseException | None) -> None:
        events.append(f"teardown_appcontext in {where()}")

    @app.get("/")
    def index() -> str:
        after_this_response(lambda: events.append(f"callback in {where()}"))
        return "ok"

    client.get("/", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert events == [
        "teardown_request in request thread",
        "teardown_appcontext in request thread",
        "callback in callback thread",
        "teardown_request in callback thread",
        "teardown_appcontext in callback thread",
    ]


def test_failing_teardown_is_logged_after_the_callbacks_ran(
    app: Flask, afterward: Afterward, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @app.teardown_appcontext
    def fragile(error: BaseException | None) -> None:
        if threading.current_thread().name.startswith(CALLBACK_THREAD):
            raise RuntimeError("teardown broke")

    @app.get("/")
    def index() -> str:
        after_this_response(ran.append, "one")
        after_this_response(ran.append, "two")
        return "ok"

    assert client.get("/", buffered=True).status_code == 200
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert ran == ["one", "two"]
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name.startswith("flask_afterward")
    assert record.exc_info is not None and record.exc_info[1] is not None
    # Flask 3.2 collects teardown errors in an exception group; earlier, it is the error.
    assert [str(error) for error in _leaves(record.exc_info[1])] == ["teardown broke"]


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in ``error``, unwrapping (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


db = SQLAlchemy()


class Signup(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]


@pytest.fixture
def with_db(app: Flask, tmp_path: pathlib.Path) -> cabc.Iterator[SQLAlchemy]:
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    db.init_app(app)
    with app.app_context():
        db.create_all()
    yield db
    with app.app_context():
        db.engine.dispose()


def test_flask_sqlalchemy_commit_in_a_callback_persists(
    app: Flask, with_db: SQLAlchemy, afterward: Afterward, client: FlaskClient
) -> None:
    def record_signup(email: str) -> None:
        db.session.add(Signup(email=email))
        db.session.commit()

    def forget_to_commit() -> None:
        db.session.add(Signup(email="never@example.com"))
        db.session.flush()  # holds a connection and an open transaction

    @app.post("/signup")
    def signup() -> str:
        after_this_response(record_signup, request.form["email"])
        after_this_response(forget_to_commit)
        return "welcome"

    client.post("/signup", data={"email": "ada@example.com"}, buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    # The commit landed; the teardown removed the session, which rolled the other
    # callback's transaction back and gave its connection back to the pool.
    with app.app_context():
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        emails = db.session.scalars(sa.select(Signup.email)).all()
    assert emails == ["ada@example.com"]


def test_callback_reads_its_request_after_the_server_reused_the_environ(app: Flask) -> None:
    # uWSGI empties the environ dict once close() returns, to reuse it for the next
    # request. One callback thread, kept busy, makes the callback start only after.
    app.config["AFTERWARD_CALLBACK_THREADS"] = 1
    afterward = Afterward(app)
    environ_reused = threading.Event()
    seen: dict[str, object] = {}

    def inspect() -> None:
        seen.update(
            url=request.url,
            header=request.headers.get("X-Trace"),
            args=request.args.to_dict(),
            remote_addr=request.remote_addr,
        )

    @app.get("/busy")
    def busy() -> str:
        after_this_response(environ_reused.wait, 5)
        return "ok"

    @app.get("/items")
    def items() -> str:
        request.headers.get("X-Trace")  # the view read the headers too
        after_this_response(inspect)
        return "ok"

    def start_response(status: str, headers: list[tuple[str, str]], exc: t.Any = None) -> t.Any:
        return None

    try:
        app.test_client().get("/busy", buffered=True)
        environ = EnvironBuilder(
            "/items?q=1", headers=[("X-Trace", "t1")], environ_base={"REMOTE_ADDR": "10.0.0.7"}
        ).get_environ()
        response: t.Any = app(environ, start_response)
        assert b"".join(response) == b"ok"
        response.close()
        environ.clear()  # what the server does with it now
        environ_reused.set()
        assert afterward.wait_for_callbacks(timeout=5, app=app)
    finally:
        environ_reused.set()
        afterward.close(app, timeout=5)

    assert seen == {
        "url": "http://localhost/items?q=1",
        "header": "t1",
        "args": {"q": "1"},
        "remote_addr": "10.0.0.7",
    }


def test_callback_runs_while_the_views_own_context_is_still_pushed(
    app: Flask, afterward: Afterward
) -> None:
    # The callback enters a context made from the request's own: the two must not
    # share per-push state. The test client keeps the view's context pushed after the
    # response (``with client``), in this thread, while the callback pushes its copy.
    seen: list[object] = []
    torn_down_in: list[str] = []

    @app.teardown_request
    def record(error: BaseException | None) -> None:
        torn_down_in.append(threading.current_thread().name)

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> str:
        after_this_response(lambda: seen.append((request.view_args, request.endpoint)))
        return "ok"

    with app.test_client() as client:
        client.get("/users/7", buffered=True)
        assert afterward.wait_for_callbacks(timeout=5, app=app)
        assert request.path == "/users/7"  # still the view's, still pushed
    assert not has_request_context()  # and popped cleanly when the client closed

    assert seen == [({"user_id": 7}, "user")]
    # Teardown ran after the view, after the callback (as after a view), and once
    # more when the client popped the view's preserved context.
    assert [name.startswith(CALLBACK_THREAD) for name in torn_down_in] == [False, True, False]


def test_callback_sees_g_as_the_request_left_it_after_its_teardown(
    app: Flask, afterward: Afterward, client: FlaskClient
) -> None:
    # Flask's tutorial pattern: a teardown_appcontext function pops and closes g.db.
    # The callback must not get the closed connection; it opens its own if it needs one.
    closed: list[object] = []

    @app.teardown_appcontext
    def close_db(error: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            closed.append(db)

    seen: list[object] = []

    @app.get("/db")
    def view() -> str:
        g.db = object()
        g.user = "ada"
        after_this_response(lambda: seen.append((g.get("user"), "db" in g)))
        return "ok"

    client.get("/db", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert seen == [("ada", False)]
    assert len(closed) == 1  # the view's, closed once


class _User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@pytest.fixture
def with_login(app: Flask) -> list[str]:
    """Flask-Login on the app; returns the ids its user loader was asked for."""
    loaded: list[str] = []
    manager = LoginManager(app)

    @manager.user_loader
    def load(user_id: str) -> _User:
        loaded.append(user_id)
        return _User(user_id)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(_User(user_id))
        return "in"

    return loaded


def test_callback_sees_current_user_the_view_saw(
    app: Flask, afterward: Afterward, client: FlaskClient, with_login: list[str]
) -> None:
    seen: list[object] = []

    @app.get("/me")
    def me() -> str:
        assert current_user.id == "ada"  # loaded from the session, kept in g
        after_this_response(lambda: seen.append((current_user.is_authenticated, current_user.id)))
        return "ok"

    client.post("/login/ada", buffered=True)
    client.get("/me", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    assert seen == [(True, "ada")]
    assert with_login == ["ada"]  # the callback did not load the user again


def test_callback_loads_current_user_when_the_view_never_looked(
    app: Flask, afterward: Afterward, client: FlaskClient, with_login: list[str]
) -> None:
    seen: list[object] = []

    @app.get("/quiet")
    def quiet() -> str:
        after_this_response(lambda: seen.append(current_user.id))
        return "ok"

    client.post("/login/grace", buffered=True)
    client.get("/quiet", buffered=True)
    assert afterward.wait_for_callbacks(timeout=5, app=app)

    # Flask-Login found the user id in the session the callback shares with the view.
    assert seen == ["grace"]
    assert with_login == ["grace"]
