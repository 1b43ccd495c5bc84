"""JSON payloads: what round-trips, and clear errors at ``.delay()`` for what cannot."""

from __future__ import annotations

import decimal
import threading
import uuid
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask

from flask_afterward import Afterward
from flask_afterward import serializers
from flask_afterward import State
from flask_afterward.errors import JobFailed
from flask_afterward.errors import SerializationError
from tests.tier2 import STORE_IDS
from tests.tier2 import store_of
from tests.tier2 import STORES
from tests.tier2 import worker_for

SPECIAL_VALUES = [
    datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 1, 2, 3, 4, 5),  # naive stays naive
    date(2026, 1, 2),
    time(23, 59, 1, 5),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("1.10"),  # the trailing zero is kept
]


@pytest.fixture(params=STORES, ids=STORE_IDS)
def app(app: Flask, request: pytest.FixtureRequest) -> Flask:
    app.config.update(AFTERWARD_STORE=request.param, AFTERWARD_WORKERS=0)
    return app


class User:
    """Not JSON."""


def test_special_types_reach_the_task_as_the_same_types(app: Flask, afterward: Afterward) -> None:
    received: list[object] = []

    @afterward.task
    def take(*values: object, nested: dict[str, list[object]]) -> None:
        received.extend(values)
        received.extend(nested["items"])

    with app.app_context():
        take.delay(*SPECIAL_VALUES, nested={"items": SPECIAL_VALUES})
        worker_for(app, afterward).run_once()
    assert received == SPECIAL_VALUES * 2
    for got, sent in zip(received, SPECIAL_VALUES * 2, strict=True):
        assert type(got) is type(sent)
        assert str(got) == str(sent)  # same precision, offset and digits
    aware = received[0]
    assert isinstance(aware, datetime) and aware.utcoffset() == timedelta(hours=2)
    naive = received[1]
    assert isinstance(naive, datetime) and naive.tzinfo is None


def test_special_types_come_back_in_results(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def give() -> list[object]:
        return SPECIAL_VALUES

    with app.app_context():
        job = give.delay()
        worker_for(app, afterward).run_once()
        result = job.result(timeout=0)
    assert result == SPECIAL_VALUES
    assert [type(v) for v in result] == [type(v) for v in SPECIAL_VALUES]


def test_tuples_come_back_as_lists() -> None:
    assert serializers.loads(serializers.dumps({"t": (1, (2, 3))})) == {"t": [1, [2, 3]]}


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        ((User(),), {}, "args[0]"),
        ((), {"user": User()}, "kwargs['user']"),
        (([1, {"a": User()}],), {}, "args[0][1]['a']"),
        ((1, 2), {"opts": {"when": [date(2026, 1, 1), {1, 2}]}}, "kwargs['opts']['when'][1]"),
        ((), {"ratio": float("nan")}, "kwargs['ratio']"),
        (({(1, 2): "tuple key"},), {}, "args[0] key (1, 2)"),
    ],
)
def test_a_non_json_argument_fails_at_delay_naming_it_and_nothing_is_stored(
    app: Flask,
    afterward: Afterward,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    path: str,
) -> None:
    @afterward.task
    def take(*args: object, **kwargs: object) -> None:
        pass

    with app.app_context():
        with pytest.raises(SerializationError) as info:
            take.delay(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path} is ")
    assert "cannot be stored as JSON" in message
    assert store_of(app).list() == []


def test_the_error_names_the_offending_type_and_is_a_type_error(
    app: Flask, afterward: Afterward
) -> None:
    @afterward.task
    def greet(user: object) -> None:
        pass

    with app.app_context(), pytest.raises(TypeError) as info:
        greet.delay(user=User())
    assert f"kwargs['user'] is a {__name__}.User" in str(info.value)


def test_a_circular_argument_fails_clearly(app: Flask, afterward: Afterward) -> None:
    @afterward.task
    def take(value: object) -> None:
        pass

    loop: list[object] = []
    loop.append(loop)
    with app.app_context(), pytest.raises(SerializationError, match=r"args\[0\]\[0\]"):
        take.delay(loop)
    assert store_of(app).list() == []


def test_a_payload_over_max_payload_is_refused_and_nothing_is_stored(app: Flask) -> None:
    app.config["AFTERWARD_MAX_PAYLOAD"] = 1000
    afterward = Afterward(app)

    @afterward.task
    def take(text: str) -> None:
        pass

    try:
        with app.app_context():
            take.delay("x" * 900)  # under the limit with its JSON wrapping
            with pytest.raises(SerializationError, match=r"over AFTERWARD_MAX_PAYLOAD \(1000\)"):
                take.delay("x" * 1000)
            with pytest.raises(SerializationError, match="AFTERWARD_MAX_PAYLOAD"):
                take.delay("é" * 600)  # 600 characters, but 1200 bytes
            assert len(store_of(app).list()) == 1
    finally:
        afterward.close(app)


def test_a_result_that_cannot_be_encoded_fails_the_job_without_retry(
    app: Flask, afterward: Afterward
) -> None:
    calls: list[int] = []

    @afterward.task(retries=3, retry_backoff=0)
    def make_user() -> User:
        calls.append(1)
        return User()

    with app.app_context():
        job = make_user.delay()
        worker_for(app, afterward).run(threading.Event(), burst=True)
        with pytest.raises(JobFailed, match=r"SerializationError: the result of .*make_user"):
            job.result(timeout=0)
    assert job.state == State.FAILED
    assert job.record.attempts == 1
    assert calls == [1]


def test_a_user_dict_that_looks_like_a_tag_only_decodes_when_complete() -> None:
    # A tag needs exactly its two keys; anything else is left as the dict it was.
    value = {"__afterward__": "uuid", "value": "x", "more": 1}
    assert serializers.loads(serializers.dumps(value)) == value
