"""``AFTERWARD_*`` configuration: defaults, validation naming the key, read once."""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading

import pytest
from flask import Flask

from flask_afterward import after_this_response
from flask_afterward import Afterward
from flask_afterward.config import Settings
from flask_afterward.errors import ConfigurationError


def test_init_app_fills_in_the_defaults_on_app_config(app: Flask, afterward: Afterward) -> None:
    assert app.config["AFTERWARD_CALLBACK_THREADS"] == 4
    assert app.config["AFTERWARD_MAX_PENDING_CALLBACKS"] == 1000
    assert app.config["AFTERWARD_SHUTDOWN_TIMEOUT"] == 30
    assert app.config["AFTERWARD_WORKERS"] == 2
    assert app.config["AFTERWARD_EAGER"] is False
    assert app.config["AFTERWARD_URL_PREFIX"] == "/afterward"


def test_default_store_is_sqlite_in_the_instance_folder(tmp_path: os.PathLike[str]) -> None:
    app = Flask("defaults", instance_path=os.fspath(tmp_path))

    settings = Settings.from_app(app)

    expected = f"sqlite:///{os.path.join(os.fspath(tmp_path), 'afterward.sqlite3')}"
    assert settings.store == expected
    assert app.config["AFTERWARD_STORE"] == expected


BAD_VALUES = [
    ("AFTERWARD_CALLBACK_THREADS", 0),
    ("AFTERWARD_CALLBACK_THREADS", -1),
    ("AFTERWARD_CALLBACK_THREADS", True),
    ("AFTERWARD_CALLBACK_THREADS", 2.5),
    ("AFTERWARD_CALLBACK_THREADS", "4"),
    ("AFTERWARD_CALLBACK_THREADS", None),
    ("AFTERWARD_MAX_PENDING_CALLBACKS", 0),
    ("AFTERWARD_MAX_PENDING_CALLBACKS", False),
    ("AFTERWARD_MAX_PENDING_CALLBACKS", "1000"),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", -1),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", "30"),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", True),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", float("nan")),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", float("inf")),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", datetime.timedelta(seconds=-1)),
    ("AFTERWARD_SHUTDOWN_TIMEOUT", None),
    ("AFTERWARD_WORKERS", -1),
    ("AFTERWARD_EAGER", "yes"),
    ("AFTERWARD_EAGER", 1),
    ("AFTERWARD_LEASE", 0),
    ("AFTERWARD_RESULT_TTL", -5),
    ("AFTERWARD_DEFER_GRACE", float("inf")),
    ("AFTERWARD_MAX_PAYLOAD", 0),
    ("AFTERWARD_AUTHORIZE", "admins only"),
    ("AFTERWARD_URL_PREFIX", "jobs"),
    ("AFTERWARD_URL_PREFIX", ""),
    ("AFTERWARD_DASHBOARD", "true"),
    ("AFTERWARD_STORE", ""),
    ("AFTERWARD_STORE", 5),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=lambda v: repr(v))
def test_bad_value_raises_configuration_error_naming_the_key(
    app: Flask, key: str, value: object
) -> None:
    app.config[key] = value

    with pytest.raises(ConfigurationError) as raised:
        Afterward(app)

    message = str(raised.value)
    shown = value.total_seconds() if isinstance(value, datetime.timedelta) else value
    assert message.startswith(f"{key} = {shown!r} is not valid: expected ")
    assert isinstance(raised.value, ValueError)
    # Nothing was registered, so fixing the value and trying again works.
    assert "afterward" not in app.extensions


def test_good_values_are_normalized(app: Flask) -> None:
    def authorize(job: object, action: str) -> bool:
        return True

    app.config.update(
        AFTERWARD_SHUTDOWN_TIMEOUT=datetime.timedelta(seconds=3),
        AFTERWARD_LEASE=5,
        AFTERWARD_URL_PREFIX="/jobs/",
        AFTERWARD_AUTHORIZE=authorize,
        AFTERWARD_WORKERS=0,
    )

    settings = Settings.from_app(app)

    assert settings.shutdown_timeout == 3.0
    assert isinstance(settings.lease, float)
    assert settings.url_prefix == "/jobs"
    assert settings.authorize is authorize
    assert settings.workers == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.workers = 3  # type: ignore[misc]


def test_zero_shutdown_timeout_is_allowed(app: Flask) -> None:
    app.config["AFTERWARD_SHUTDOWN_TIMEOUT"] = 0
    assert Settings.from_app(app).shutdown_timeout == 0.0


def test_config_changed_after_init_app_has_no_effect(app: Flask, afterward: Afterward) -> None:
    # Given the default of 4 callback threads, read at init_app
    app.config["AFTERWARD_CALLBACK_THREADS"] = 1
    together = threading.Barrier(2, timeout=5)
    met: list[str] = []

    def meet() -> None:
        together.wait()  # needs two callbacks running at the same time
        met.append(threading.current_thread().name)

    @app.get("/")
    def index() -> str:
        after_this_response(meet)
        return "ok"

    client = app.test_client()
    client.get("/", buffered=True)
    client.get("/", buffered=True)

    # Then two threads ran them together: the later value of 1 was not used
    assert afterward.wait_for_callbacks(timeout=5, app=app)
    assert len(set(met)) == 2


def test_second_init_app_raises(app: Flask, afterward: Afterward) -> None:
    with pytest.raises(ConfigurationError, match="already been registered") as raised:
        afterward.init_app(app)
    assert "Import and use that instance instead" in str(raised.value)

    with pytest.raises(ConfigurationError, match="already been registered"):
        Afterward(app)
