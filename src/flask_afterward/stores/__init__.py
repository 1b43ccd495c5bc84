"""Choose a store by URL scheme, importing it only when asked for (like saq ``Queue.from_url``).

``sqlite:///relative/path`` is relative to the app's instance folder;
``sqlite:////absolute/path`` is absolute; ``memory://`` lives in the process.
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
SCHEMES: t.Final = ("sqlite", "memory")


def open_store(settings: Settings, *, instance_path: str) -> Store:
    """Open the store ``settings.store`` names.

    :raises ConfigurationError: for an unknown scheme or bad options, naming the key.
    """
    url = urllib.parse.urlsplit(settings.store)
    options = dict(urllib.parse.parse_qsl(url.query))
    if url.scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore(defer_grace=settings.defer_grace)
    if url.scheme == "sqlite":
        from .sqlite import SqliteStore

        path = url.path[1:] if url.path.startswith("/") else url.path
        if not path:
            raise ConfigurationError(
                f"AFTERWARD_STORE = {settings.store!r} names no file: use "
                "'sqlite:///relative/to/instance.sqlite3' or 'sqlite:////absolute/path'."
            )
        unknown = set(options) - {"synchronous", "timeout"}
        if unknown:
            raise ConfigurationError(
                f"AFTERWARD_STORE has unknown options {sorted(unknown)}: the sqlite store "
                "takes 'synchronous' (NORMAL or FULL) and 'timeout' (seconds)."
            )
        return SqliteStore(
            os.path.join(instance_path, path),  # an absolute path wins in join
            defer_grace=settings.defer_grace,
            synchronous=options.get("synchronous", "NORMAL"),
            busy_timeout=float(options.get("timeout", 10.0)),
        )
    raise ConfigurationError(
        f"AFTERWARD_STORE = {settings.store!r} has an unknown scheme {url.scheme!r}. "
        f"Use one of: {', '.join(s + '://' for s in SCHEMES)}."
    )
