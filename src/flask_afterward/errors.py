"""Exceptions raised by flask-afterward.

Every error derives from :class:`AfterwardError`, so one ``except`` catches them all,
and most also derive from the built-in type a caller would naturally catch
(``ValueError`` for bad configuration, ``TypeError`` for values that cannot be
serialized), so existing handlers keep working.
"""

from __future__ import annotations


class AfterwardError(Exception):
    """Base class for flask-afterward errors. Do not raise directly."""

    def __init__(self, message: str | None = None) -> None:
        # The docstring doubles as the default message, so a bare ``raise X()`` still
        # tells the user what went wrong.
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(AfterwardError, ValueError):
    """An ``AFTERWARD_*`` setting or an argument has a value that cannot be used."""


class Unsupported(ConfigurationError):
    """The store or executor cannot honour an option or a call.

    The message names the option, the store and what to do instead; see the
    capability table in ``docs/engines.rst``.
    """


class NotInitialized(AfterwardError, RuntimeError):
    """flask-afterward is not registered on the current app.

    Did you forget to call ``afterward.init_app(app)``?
    """


class OutsideRequest(AfterwardError, RuntimeError):
    """``after_this_response`` was called outside of a request.

    It schedules work for the response being served, so it only works inside a view
    or a request hook. Outside a request, call the function directly, or enqueue a
    durable job with ``task.delay()``.
    """


class StoreError(AfterwardError, RuntimeError):
    """The job store could not do what was asked, though it is configured right.

    A conflict it cannot settle on its own; the message says which, and what to do.
    """


class SerializationError(AfterwardError, TypeError):
    """A value cannot be encoded as JSON; the message names the offending argument."""


class JobNotFound(AfterwardError, LookupError):
    """No job has this id; it never existed or it expired after its result TTL."""


class JobFailed(AfterwardError):
    """The job ended in failure; the message carries the job's error text."""


class JobCancelled(AfterwardError):
    """The job was cancelled before it could finish."""


class JobTimeout(AfterwardError, TimeoutError):
    """The job did not finish within the time given."""


class MissingDependency(AfterwardError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class UnsupportedVersion(AfterwardError, ValueError):
    """A stored job payload or result is in a format version this release cannot read.

    It was probably written by a newer flask-afterward: upgrade this one, or let the
    release that wrote it finish its jobs.
    """
