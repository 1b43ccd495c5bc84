"""Read the ``AFTERWARD_*`` configuration once, validate it, and freeze it.

Settings are read in ``init_app`` (as Flask-SQLAlchemy does): every key is given its
default with ``app.config.setdefault`` so the effective configuration is visible on the
app, then validated into a frozen :class:`Settings`. Changing ``app.config`` afterwards
has no effect. A bad value raises :class:`~flask_afterward.errors.ConfigurationError`
naming the key, the value and what is accepted.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import math
import os
import typing as t

from .errors import ConfigurationError

if t.TYPE_CHECKING:
    from flask import Flask

    # Annotations only: jobs sits in a higher layer than config, which must not
    # import it at run time (imports point one way, from the leaf modules up).
    from .jobs import Job

#: Where the per-app state lives: ``app.extensions[EXTENSION_KEY]``.
EXTENSION_KEY: t.Final = "afterward"

#: What the jobs HTTP API asks ``AFTERWARD_AUTHORIZE`` to allow: ``"read"`` a job
#: (status, result, events) or ``"cancel"`` it.
Action = t.Literal["read", "cancel"]
#: ``callable(job, action) -> bool`` deciding who may read or cancel a job over HTTP.
#: A function typed ``(job: Job[Any], action: str) -> bool`` fits too.
Authorize = cabc.Callable[["Job[t.Any]", Action], bool]

_DEFAULTS: dict[str, object] = {
    "AFTERWARD_STORE": None,  # computed from the instance path
    "AFTERWARD_WORKERS": 2,
    "AFTERWARD_CALLBACK_THREADS": 4,
    "AFTERWARD_MAX_PENDING_CALLBACKS": 1000,
    "AFTERWARD_SHUTDOWN_TIMEOUT": 30.0,
    "AFTERWARD_EAGER": False,
    "AFTERWARD_RESULT_TTL": 86400.0,
    "AFTERWARD_LEASE": 30.0,
    "AFTERWARD_DEFER_GRACE": 60.0,
    "AFTERWARD_MAX_PAYLOAD": 1024 * 1024,
    "AFTERWARD_AUTHORIZE": None,
    "AFTERWARD_URL_PREFIX": "/afterward",
    "AFTERWARD_DASHBOARD": False,
    "AFTERWARD_DASHBOARD_AUTHORIZE": None,
    "AFTERWARD_DASHBOARD_READ_ONLY": False,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The validated ``AFTERWARD_*`` settings of one app. See ``docs/config.rst``."""

    store: str
    workers: int = 2
    callback_threads: int = 4
    max_pending_callbacks: int = 1000
    shutdown_timeout: float = 30.0
    eager: bool = False
    result_ttl: float = 86400.0
    lease: float = 30.0
    defer_grace: float = 60.0
    max_payload: int = 1024 * 1024
    authorize: Authorize | None = None
    url_prefix: str = "/afterward"
    dashboard: bool = False
    #: ``callable(action) -> bool``, action ``"read"`` or ``"write"``; None: loopback only
    dashboard_authorize: cabc.Callable[[str], bool] | None = None
    dashboard_read_only: bool = False

    @classmethod
    def from_app(cls, app: Flask) -> Settings:
        """Fill in defaults on ``app.config`` and validate every ``AFTERWARD_*`` key."""
        config = app.config
        for key, default in _DEFAULTS.items():
            config.setdefault(key, default)
        if config["AFTERWARD_STORE"] is None:
            path = os.path.join(app.instance_path, "afterward.sqlite3")
            config["AFTERWARD_STORE"] = f"sqlite:///{path}"
        return cls(
            store=_text(config, "AFTERWARD_STORE"),
            workers=_integer(config, "AFTERWARD_WORKERS", minimum=0),
            callback_threads=_integer(config, "AFTERWARD_CALLBACK_THREADS", minimum=1),
            max_pending_callbacks=_integer(config, "AFTERWARD_MAX_PENDING_CALLBACKS", minimum=1),
            shutdown_timeout=_seconds(config, "AFTERWARD_SHUTDOWN_TIMEOUT", zero_ok=True),
            eager=_flag(config, "AFTERWARD_EAGER"),
            result_ttl=_seconds(config, "AFTERWARD_RESULT_TTL"),
            lease=_seconds(config, "AFTERWARD_LEASE"),
            defer_grace=_seconds(config, "AFTERWARD_DEFER_GRACE"),
            max_payload=_integer(config, "AFTERWARD_MAX_PAYLOAD", minimum=1),
            authorize=_optional_callable(config, "AFTERWARD_AUTHORIZE"),
            url_prefix=_url_prefix(config, "AFTERWARD_URL_PREFIX"),
            dashboard=_flag(config, "AFTERWARD_DASHBOARD"),
            dashboard_authorize=_optional_hook(config, "AFTERWARD_DASHBOARD_AUTHORIZE"),
            dashboard_read_only=_flag(config, "AFTERWARD_DASHBOARD_READ_ONLY"),
        )


def _bad(key: str, value: object, expected: str) -> ConfigurationError:
    return ConfigurationError(
        f"{key} = {value!r} is not valid: expected {expected}. Fix it in the app config."
    )


def _integer(config: cabc.Mapping[str, t.Any], key: str, *, minimum: int) -> int:
    value = config[key]
    # bool is an int subclass; True as a thread count is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"an integer >= {minimum}")
    return value


def _seconds(config: cabc.Mapping[str, t.Any], key: str, *, zero_ok: bool = False) -> float:
    value = config[key]
    if hasattr(value, "total_seconds"):  # timedelta is accepted at the public edge
        value = value.total_seconds()
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        # Not NaN, and not infinity either: timeouts end (thread joins overflow on it).
        raise _bad(key, value, "a finite number of seconds " + (">= 0" if zero_ok else "> 0"))
    return float(value)


def _flag(config: cabc.Mapping[str, t.Any], key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise _bad(key, value, "True or False")
    return value


def _text(config: cabc.Mapping[str, t.Any], key: str) -> str:
    value = config[key]
    if not isinstance(value, str) or not value:
        raise _bad(key, value, "a non-empty string")
    return value


def _url_prefix(config: cabc.Mapping[str, t.Any], key: str) -> str:
    value = _text(config, key)
    if not value.startswith("/"):
        raise _bad(key, value, "a path starting with '/'")
    return value.rstrip("/")


def _optional_callable(config: cabc.Mapping[str, t.Any], key: str) -> Authorize | None:
    value = config[key]
    if value is not None and not callable(value):
        raise _bad(key, value, "None or a callable(job, action) -> bool")
    return t.cast("Authorize | None", value)


def _optional_hook(config: cabc.Mapping[str, t.Any], key: str) -> cabc.Callable[[str], bool] | None:
    value = config[key]
    if value is not None and not callable(value):
        raise _bad(key, value, "None or a callable(action) -> bool")
    return t.cast("cabc.Callable[[str], bool] | None", value)
