"""The engine seam: state lookup, executors, capabilities, and signals as real workers send them.

The jobs here run on worker threads of their own (``run_burst``) or eagerly, never in
the test's own app context, so a signal or a job that needs a context must get it
from the executor.
"""

from __future__ import annotations

import threading
import typing as t

import pytest
from flask import current_app
from flask import Flask
from flask import g
from flask import has_app_context

from flask_afterward import Afterward
from flask_afterward.errors import NotInitialized
from flask_afterward.errors import Unsupported
from flask_afterward.records import ALL_CAPABILITIES
from flask_afterward.records import Capability
from flask_afterward.records import State
from flask_afterward.signals import job_enqueued
from flask_afterward.signals import job_finished
from flask_afterward.signals import job_started
from flask_afterward.state import get_state
from flask_afterward.stores.memory import MemoryStore
from tests.tier2 import run_burst
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_WORKERS=0)
    return app


class Seen(t.NamedTuple):
    signal: str
    has_context: bool
    is_our_app: bool
    thread: str


def _watch(seen: list[Seen], name: str) -> t.Callable[..., None]:
    def receiver(sender: Flask, **kwargs: object) -> None:
        is_ours = has_app_context() and current_app._get_current_object() is sender  # type: ignore[attr-defined]
        seen.append(Seen(name, has_app_context(), is_ours, threading.current_thread().name))

    return receiver


@pytest.mark.parametrize("eager", [False, True], ids=["worker", "eager"])
def test_job_signals_are_sent_inside_an_app_context_whoever_runs_the_job(
    app: Flask, eager: bool
) -> None:
    # Given receivers that look at the context they are called in,
    app.config["AFTERWARD_EAGER"] = eager
    afterward = Afterward(app)
    seen: list[Seen] = []

    @afterward.task
    def ok() -> str:
        return "done"

    try:
        with (
            job_started.connected_to(_watch(seen, "started")),
            job_finished.connected_to(_watch(seen, "finished")),
        ):
            # When a job is enqueued in a context and run by the executor
            with app.app_context():
                job = ok.delay()
            if not eager:
                run_burst(app, afterward)  # on the worker's threads, without our context
            with app.app_context():
                assert job.result(timeout=5) == "done"
    finally:
        afterward.close(app, timeout=5)

    # Then both signals came inside an app context of the sending app
    assert [(s.signal, s.has_context, s.is_our_app) for s in seen] == [
        ("started", True, True),
        ("finished", True, True),
    ]
    test_thread = threading.current_thread().name
    assert all((s.thread == test_thread) == eager for s in seen)


def test_job_started_shares_the_jobs_own_app_context(app: Flask, afterward: Afterward) -> None:
    # A receiver of job_started may prepare what the job reads from g (a request id).
    @afterward.task
    def read_g() -> str:
        return t.cast(str, g.trace_id)

    def set_trace_id(sender: Flask, **kwargs: object) -> None:
        g.trace_id = "trace-42"

    with job_started.connected_to(set_trace_id), app.app_context():
        job = read_g.delay()
        run_burst(app, afterward)
        assert job.result(timeout=5) == "trace-42"


def test_a_raising_job_enqueued_receiver_does_not_make_delay_raise(
    app: Flask, afterward: Afterward, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a metrics receiver with a bug,
    @afterward.task
    def ok() -> str:
        return "done"

    def broken(sender: object, **kwargs: object) -> None:
        raise RuntimeError("metrics bug")

    with job_enqueued.connected_to(broken), app.app_context():
        # When a job is enqueued, .delay() returns the stored job: a caller that saw
        # an exception would enqueue it again, and then it would run twice.
        job = ok.delay()
        assert [record.id for record in store_of(app).list()] == [job.id]
        run_burst(app, afterward)
        assert job.result(timeout=5) == "done"

    (failure,) = [r for r in caplog.records if "receiver of the job-enqueued" in r.getMessage()]
    assert failure.exc_info is not None and "metrics bug" in str(failure.exc_info[1])


def test_the_executor_follows_the_configuration(app: Flask) -> None:
    lazy = Afterward(app)
    try:
        assert get_state(app).executor.name == "local"
        assert get_state(app).capabilities == ALL_CAPABILITIES
    finally:
        lazy.close(app, timeout=5)

    eager_app = Flask("eager", instance_path=app.instance_path)
    eager_app.config.update(AFTERWARD_STORE="memory://", AFTERWARD_EAGER=True)
    eager = Afterward(eager_app)
    try:
        state = get_state(eager_app)
        assert state.executor.name == "eager"
        # The caller runs an eager job: nothing else can stop it while it runs.
        assert state.capabilities == ALL_CAPABILITIES - {Capability.CANCEL_RUNNING}
    finally:
        eager.close(eager_app, timeout=5)


def test_get_state_says_what_is_missing(app: Flask) -> None:
    with pytest.raises(NotInitialized, match="needs an app context"):
        get_state()
    with app.app_context(), pytest.raises(NotInitialized, match="init_app"):
        get_state()
    afterward = Afterward(app)
    try:
        with app.app_context():
            assert get_state() is get_state(app) is app.extensions["afterward"]
    finally:
        afterward.close(app, timeout=5)


# -- Capabilities: an option the store cannot honour fails where it is written ------------


@pytest.fixture
def limited_app(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Flask]:
    """An app on a store that honours neither ``unique`` nor ``priority`` nor deferral."""
    lacking = {Capability.UNIQUE, Capability.PRIORITY, Capability.DEFER}
    monkeypatch.setattr(MemoryStore, "capabilities", ALL_CAPABILITIES - lacking)
    app = Flask("limited", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="test", AFTERWARD_STORE="memory://", AFTERWARD_WORKERS=0)
    yield app


def test_an_option_the_store_cannot_honour_is_refused_at_options(limited_app: Flask) -> None:
    afterward = Afterward(limited_app)

    @afterward.task
    def mail(to: str) -> None: ...

    try:
        with limited_app.app_context():
            with pytest.raises(Unsupported, match=r"unique= cannot be honoured") as raised:
                mail.options(unique="mail:a")
            assert "'memory://'" in str(raised.value) and "'local'" in str(raised.value)
            with pytest.raises(Unsupported, match=r"priority=5"):
                mail.options(priority=5)
            # What the store has is fine.
            assert mail.options(delay=30, retries=2).delay("a").state == State.QUEUED
    finally:
        afterward.close(limited_app, timeout=5)


def test_an_option_set_outside_an_app_is_refused_at_delay_and_nothing_is_stored(
    limited_app: Flask,
) -> None:
    afterward = Afterward(limited_app)

    @afterward.task(priority=3)
    def urgent() -> None: ...

    unique = urgent.options(priority=0, unique="once")  # no app here: checked at .delay()
    try:
        with limited_app.app_context():
            for task, option in ((urgent, "priority=3"), (unique, "unique=")):
                with pytest.raises(Unsupported, match=option):
                    task.delay()
            assert store_of(limited_app).list() == []
    finally:
        afterward.close(limited_app, timeout=5)


def test_after_response_is_refused_where_the_store_cannot_defer(limited_app: Flask) -> None:
    afterward = Afterward(limited_app)

    @afterward.task
    def later() -> None: ...

    @limited_app.post("/")
    def view() -> str:
        try:
            later.after_response()
        except Unsupported as error:
            return str(error)
        return "stored"

    try:
        with limited_app.test_client() as client:
            answer = client.post("/").get_data(as_text=True)
        assert answer.startswith(".after_response() cannot be honoured")
        assert store_of(limited_app).list() == []
    finally:
        afterward.close(limited_app, timeout=5)
