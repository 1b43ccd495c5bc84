"""Choose a store by URL scheme, importing it only when asked for (like saq ``Queue.from_url``).

``sqlite:///relative/path`` is relative to the app's instance folder;
``sqlite:////absolute/path`` is absolute; ``memory://`` lives in the process;
``redis://host:port/db`` (``rediss://`` for TLS) is shared by every machine that
reaches it, and imports redis-py only when asked for.
"""

from __future__ import annotations

import os
import typing as t
import urllib.parse

from ..errors import ConfigurationError

if t.TYPE_CHECKING:
    from ..config import Settings
    from .base import Store

#: Schemes ``open_store`` understands.
SCHEMES: t.Final = ("sqlite", "memory", "redis", "rediss")


def open_store(settings: Settings, *, instance_path: str) -> Store:
    """Open the store ``settings.store`` names.

    :raises ConfigurationError: for an unknown scheme or bad options, naming the key.
    """
    url = urllib.parse.urlsplit(settings.store)
    options = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    if url.scheme == "memory":
        from .memory import MemoryStore

        _refuse_unknown(settings, options, {}, "the memory store takes no options.")
        return MemoryStore(defer_grace=settings.defer_grace)
    if url.scheme == "sqlite":
        return _open_sqlite(settings, url, options, instance_path)
    if url.scheme in ("redis", "rediss"):
        return _open_redis(settings, url, options)
    raise ConfigurationError(
        f"AFTERWARD_STORE = {settings.store!r} has an unknown scheme {url.scheme!r}. "
        f"Use one of: {', '.join(s + '://' for s in SCHEMES)}."
    )


#: The options of a ``sqlite://`` URL, with what they accept.
_SQLITE_OPTIONS: t.Final = {
    "synchronous": "NORMAL or FULL",
    "timeout": "seconds a writer waits for the lock, a number > 0",
}


def _open_sqlite(
    settings: Settings,
    url: urllib.parse.SplitResult,
    options: dict[str, str],
    instance_path: str,
) -> Store:
    from .sqlite import SqliteStore

    path = url.path[1:] if url.path.startswith("/") else url.path
    if url.netloc or not path:
        # "sqlite://name.db" would silently put "name.db" in the host part.
        raise ConfigurationError(
            f"AFTERWARD_STORE = {settings.store!r} names no file: use "
            "'sqlite:///relative/to/instance.sqlite3' or 'sqlite:////absolute/path'."
        )
    _refuse_unknown(settings, options, _SQLITE_OPTIONS, "the sqlite store takes")
    timeout = options.get("timeout", "10")
    try:
        busy_timeout = float(timeout)
    except ValueError:
        busy_timeout = -1.0
    if not busy_timeout > 0:  # also NaN
        raise ConfigurationError(
            f"AFTERWARD_STORE option timeout={timeout!r} is not valid: expected "
            f"{_SQLITE_OPTIONS['timeout']}."
        )
    return SqliteStore(
        os.path.join(instance_path, path),  # an absolute path wins in join
        defer_grace=settings.defer_grace,
        synchronous=options.get("synchronous", "NORMAL"),
        busy_timeout=busy_timeout,
    )


#: The options of a ``redis://`` URL, with what they accept; redis-py's own URL
#: options are not passed through (one list of what we support, checked here).
_REDIS_OPTIONS: t.Final = {
    "prefix": "the first part of every key, default 'afterward'",
    "timeout": "seconds to wait for Redis to connect or answer, a number > 0",
}


def _open_redis(
    settings: Settings, url: urllib.parse.SplitResult, options: dict[str, str]
) -> Store:
    from .redis import RedisStore  # raises MissingDependency without redis-py

    _refuse_unknown(settings, options, _REDIS_OPTIONS, "the redis store takes")
    prefix = options.get("prefix", "afterward")
    timeout = options.get("timeout", "10")
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = -1.0
    if not prefix or not seconds > 0:  # also NaN
        name, what = ("prefix", prefix) if not prefix else ("timeout", timeout)
        raise ConfigurationError(
            f"AFTERWARD_STORE option {name}={what!r} is not valid: expected {_REDIS_OPTIONS[name]}."
        )
    return RedisStore(
        url._replace(query="").geturl(),
        prefix=prefix,
        defer_grace=settings.defer_grace,
        timeout=seconds,
    )


def _refuse_unknown(
    settings: Settings, options: dict[str, str], known: dict[str, str], takes: str
) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(f"{name!r} ({what})" for name, what in known.items())
        raise ConfigurationError(
            f"AFTERWARD_STORE = {settings.store!r} has unknown options {unknown}: "
            f"{takes} {accepted}".rstrip()
            + ("." if accepted else "")
        )
