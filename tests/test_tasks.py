"""Tasks: the decorator, ``.delay()``, ``.options()``, ``.after_response()``.

Every test runs against the memory and the sqlite store, with no in-process workers:
jobs run only when a test drives a :class:`~flask_afterward.worker.Worker` itself.
"""

from __future__ import annotations

import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import UTC

import pytest
from flask import abort
from flask import Flask

from flask_afterward import Afterward
from flask_afterward import Job
from flask_afterward import State
from flask_afterward.errors import ConfigurationError
from flask_afterward.errors import NotInitialized
from flask_afterward.signals import job_enqueued
from tests.tier2 import run_burst
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES
from tests.tier2 import worker_for


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_WORKERS=0)
    return app


def test_bare_decorator_names_the_task_after_its_function(afterward: Afterward) -> None:
    @afterward.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add.name == f"{__name__}.{add.fn.__qualname__}"
    assert afterward.tasks[add.name] is add
    assert add.defaults.queue == "default"
    assert add.defaults.retries == 0


def test_decorator_options_become_the_defaults_of_every_job(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task(
        name="mail.send", queue="mail", retries=3, retry_backoff=2.5, timeout=9, result_ttl=60
    )
    def send(to: str) -> None:
        pass

    with app.app_context():
        record = send.delay("a@b").record

    assert afterward.tasks["mail.send"] is send
    assert record.task == "mail.send"
    assert record.queue == "mail"
    assert record.max_retries == 3
    assert record.retry_backoff == 2.5
    assert record.timeout == 9
    assert record.result_ttl == 60


def test_result_ttl_defaults_to_the_app_setting(app: Flask) -> None:
    app.config["AFTERWARD_RESULT_TTL"] = 120
    afterward = Afterward(app)

    @afterward.task
    def noop() -> None:
        pass

    try:
        with app.app_context():
            assert noop.delay().record.result_ttl == 120
    finally:
        afterward.close(app)


def test_a_task_name_can_be_registered_only_once(afterward: Afterward) -> None:
    @afterward.task(name="dup")
    def first() -> None:
        pass

    with pytest.raises(ConfigurationError, match="'dup' is already registered"):

        @afterward.task(name="dup")
        def second() -> None:
            pass

    assert afterward.tasks["dup"] is first


def test_calling_a_task_runs_it_now_and_stores_no_job(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def add(a: int, b: int) -> int:
        return a + b

    with app.app_context():
        assert add(2, 3) == 5
    assert store_of(app).list() == []


def test_delay_stores_a_queued_job_that_a_worker_runs(app: Flask, afterward: Afterward) -> None:
    calls: list[tuple[int, int]] = []

    @afterward.task
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    with app.app_context():
        job = add.delay(2, b=3)
        assert job.state == State.QUEUED
        assert calls == []  # nothing runs at enqueue

        assert worker_for(app, afterward).run_once() is True

        assert job.result(timeout=0) == 5
    assert calls == [(2, 3)]
    assert job.state == State.SUCCEEDED


def test_delay_outside_an_app_context_says_what_is_missing(afterward: Afterward) -> None:
    @afterward.task
    def noop() -> None:
        pass

    with pytest.raises(NotInitialized, match="needs an app context"):
        noop.delay()


def test_options_returns_a_configured_copy_and_leaves_the_original_alone(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task(queue="mail", retries=1)
    def send(to: str) -> str:
        return to

    urgent = send.options(
        queue="urgent", priority=5, retries=4, timeout=timedelta(seconds=3), unique="k"
    )

    assert urgent is not send
    assert urgent.name == send.name
    assert (urgent.defaults.queue, urgent.defaults.priority) == ("urgent", 5)
    assert (urgent.defaults.retries, urgent.defaults.timeout) == (4, 3.0)
    assert urgent.defaults.unique == "k"
    assert send.defaults.queue == "mail"
    assert send.defaults.priority == 0
    assert send.defaults.retries == 1
    assert send.defaults.timeout is None
    assert send.defaults.unique is None
    assert afterward.tasks[send.name] is send  # the copy is not registered again
    with app.app_context():
        assert urgent("x") == "x"
        assert urgent.delay("x").record.queue == "urgent"
        assert send.delay("x").record.queue == "mail"


@pytest.mark.parametrize(
    "options",
    [
        {"queue": ""},
        {"queue": 3},
        {"priority": "high"},
        {"priority": 1.5},
        {"retries": -1},
        {"retries": True},
        {"delay": -1},
        {"delay": "soon"},
        {"delay": float("nan")},
        {"timeout": 0},
        {"timeout": -2},
        {"result_ttl": 0},
        {"retry_backoff": -1},
        {"unique": 42},
        {"eta": datetime(2030, 1, 1)},  # naive: ambiguous
        {"eta": 1893456000},  # a timestamp, not a datetime
    ],
    ids=repr,
)
def test_bad_option_values_are_refused_at_options(
    afterward: Afterward, options: dict[str, object]
) -> None:
    @afterward.task
    def noop() -> None:
        pass

    (name,) = options
    with pytest.raises(ConfigurationError, match=f"Task option {name}="):
        noop.options(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"queue": ""},
        {"retries": -1},
        {"retries": 2.0},
        {"timeout": 0},
        {"timeout": "60"},
        {"retry_backoff": "1"},
        {"result_ttl": -5},
    ],
    ids=repr,
)
def test_bad_option_values_are_refused_at_the_decorator(
    afterward: Afterward, options: dict[str, object]
) -> None:
    def noop() -> None:
        pass

    task: t.Any = afterward.task  # the values are wrong on purpose
    (name,) = options
    with pytest.raises(ConfigurationError, match=f"Task option {name}="):
        task(**options)(noop)

    assert not [name for name in afterward.tasks if name.endswith(".noop")]


def test_unique_returns_the_active_job_instead_of_storing_another(
    app: Flask, afterward: Afterward
) -> None:
    runs: list[str] = []

    @afterward.task
    def sync(who: str) -> None:
        runs.append(who)

    enqueued: list[str] = []

    def on_enqueued(sender: Flask, job: Job[None]) -> None:
        enqueued.append(job.id)

    with app.app_context(), job_enqueued.connected_to(on_enqueued):
        first = sync.options(unique="sync:1").delay("first")
        second = sync.options(unique="sync:1").delay("second")
        other = sync.options(unique="sync:2").delay("other")

        assert second.id == first.id
        assert enqueued == [first.id, other.id]  # nothing stored: nothing announced
        assert other.id != first.id
        assert len(store_of(app).list()) == 2
        run_burst(app, afterward)

        # Once the holder is finished, the key is free again.
        third = sync.options(unique="sync:1").delay("third")
        assert third.id != first.id
        run_burst(app, afterward)
    assert sorted(runs) == ["first", "other", "third"]


def test_a_delayed_job_is_not_runnable_before_its_time(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def ping() -> str:
        return "pong"

    with app.app_context():
        job = ping.options(delay=0.3).delay()
        worker = worker_for(app, afterward, min_idle=0.01, max_idle=0.05)
        assert worker.run_once() is False  # not yet

        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()
        try:
            assert job.result(timeout=5) == "pong"
        finally:
            stop.set()
            thread.join(5)
    record = job.record
    assert record.started_at is not None
    assert record.run_at == pytest.approx(record.created_at + 0.3)
    assert record.started_at >= record.run_at


def test_an_eta_holds_the_job_and_wins_over_delay(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def ping() -> None:
        pass

    later = datetime.now(UTC) + timedelta(hours=1)
    earlier = datetime.now(UTC) - timedelta(seconds=1)
    with app.app_context():
        held = ping.options(eta=later, delay=0).delay()
        due = ping.options(delay=3600).options(eta=earlier).delay()

        worker = worker_for(app, afterward)
        assert worker.run_once() is True
        assert worker.run_once() is False

        held.refresh()
        due.refresh()
    assert held.state == State.QUEUED
    assert held.record.run_at == pytest.approx(later.timestamp())
    assert due.state == State.SUCCEEDED


def test_higher_priority_runs_first_then_the_oldest(app: Flask, afterward: Afterward) -> None:
    order: list[str] = []

    @afterward.task
    def record(label: str) -> None:
        order.append(label)

    with app.app_context():
        record.delay("low-1")
        record.options(priority=-5).delay("lowest")
        record.options(priority=10).delay("high")
        record.delay("low-2")
        record.options(priority=5).delay("mid")
        run_burst(app, afterward)
    assert order == ["high", "mid", "low-1", "low-2", "lowest"]


def test_a_worker_takes_jobs_from_its_queues_only(app: Flask, afterward: Afterward) -> None:
    @afterward.task(queue="mail")
    def send() -> str:
        return "sent"

    with app.app_context():
        mail = send.delay()
        other = send.options(queue="reports").delay()
        assert worker_for(app, afterward, queues=["reports"]).run_once() is True
        assert worker_for(app, afterward, queues=["reports"]).run_once() is False
        mail.refresh()
        other.refresh()
    assert mail.state == State.QUEUED
    assert other.state == State.SUCCEEDED


class TestAfterResponse:
    """``task.after_response()``: stored before the response, runnable after it."""

    def test_job_is_deferred_during_the_request_and_queued_once_delivered(
        self, app: Flask, afterward: Afterward
    ) -> None:
        @afterward.task
        def welcome(to: str) -> str:
            return f"hi {to}"

        seen: dict[str, object] = {}

        @app.get("/")
        def view() -> str:
            job = welcome.after_response("ann")
            seen["id"] = job.id
            seen["stored_state"] = afterward.job(job.id).state
            seen["runnable"] = worker_for(app, afterward).run_once()
            return "ok"

        response = app.test_client().get("/", buffered=True)
        assert response.status_code == 200
        assert seen["stored_state"] == State.DEFERRED
        assert seen["runnable"] is False

        assert afterward.wait_for_callbacks(5, app=app)
        with app.app_context():
            job = afterward.job(str(seen["id"]))
            assert job.state == State.QUEUED
            assert worker_for(app, afterward).run_once() is True
            assert job.result(timeout=0) == "hi ann"

    @pytest.mark.parametrize("propagate", [True, False], ids=["propagated", "500"])
    def test_job_is_cancelled_when_the_request_ends_in_an_unhandled_exception(
        self, app: Flask, afterward: Afterward, propagate: bool
    ) -> None:
        app.config["PROPAGATE_EXCEPTIONS"] = propagate

        @afterward.task
        def welcome() -> None:
            pass

        ids: list[str] = []

        @app.get("/")
        def view() -> str:
            ids.append(welcome.after_response().id)
            raise RuntimeError("view failed")

        client = app.test_client()
        if propagate:
            with pytest.raises(RuntimeError, match="view failed"):
                client.get("/", buffered=True)
        else:
            assert client.get("/", buffered=True).status_code == 500

        assert afterward.wait_for_callbacks(5, app=app)
        with app.app_context():
            assert afterward.job(ids[0]).state == State.CANCELLED
            assert worker_for(app, afterward).run_once() is False

    def test_job_is_released_when_an_error_handler_answers(
        self, app: Flask, afterward: Afterward
    ) -> None:
        @afterward.task
        def audit() -> None:
            pass

        ids: list[str] = []

        @app.get("/")
        def view() -> str:
            ids.append(audit.after_response().id)
            abort(404)

        assert app.test_client().get("/", buffered=True).status_code == 404
        assert afterward.wait_for_callbacks(5, app=app)
        with app.app_context():
            assert afterward.job(ids[0]).state == State.QUEUED

    def test_outside_a_request_it_is_delay(self, app: Flask, afterward: Afterward) -> None:
        @afterward.task
        def ping() -> str:
            return "pong"

        with app.app_context():
            job = ping.after_response()
            assert job.state == State.QUEUED
            assert worker_for(app, afterward).run_once() is True
            assert job.result(timeout=0) == "pong"

    def test_a_failing_request_does_not_cancel_another_requests_unique_job(
        self, app: Flask, afterward: Afterward
    ) -> None:
        app.config["PROPAGATE_EXCEPTIONS"] = False

        @afterward.task
        def rebuild() -> None:
            pass

        ids: list[str] = []

        @app.get("/ok")
        def ok() -> str:
            ids.append(rebuild.options(unique="rebuild").after_response().id)
            # The job is still deferred while another request runs.
            assert app.test_client().get("/fail", buffered=True).status_code == 500
            return "ok"

        @app.get("/fail")
        def fail() -> str:
            ids.append(rebuild.options(unique="rebuild").after_response().id)
            raise RuntimeError("boom")

        assert app.test_client().get("/ok", buffered=True).status_code == 200
        assert afterward.wait_for_callbacks(5, app=app)
        assert ids[0] == ids[1]  # deduplicated: /fail got /ok's job back
        with app.app_context():
            assert afterward.job(ids[0]).state == State.QUEUED


def test_enqueue_time_is_recorded(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def noop() -> None:
        pass

    before = time.time()
    with app.app_context():
        job = noop.delay()
    assert job.created_at is not None
    assert before <= job.created_at.timestamp() <= time.time()
    assert job.finished_at is None
