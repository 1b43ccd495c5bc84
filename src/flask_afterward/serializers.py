"""JSON encoding of job arguments and results; never pickle.

``datetime``, ``date``, ``time``, ``UUID`` and ``Decimal`` are tagged
(``{"__afterward__": "datetime", "value": "2026-01-01T00:00:00+00:00"}``) and come back as
the same type, so a task gets what the caller passed. Anything else that JSON cannot
hold fails at the call site with a :class:`~flask_afterward.errors.SerializationError`
naming the argument, e.g. ``kwargs['user']``. Tuples come back as lists.
"""

from __future__ import annotations

import collections.abc as cabc
import datetime as dt
import decimal
import json
import typing as t
import uuid

from .errors import SerializationError

_TAG: t.Final = "__afterward__"

_DECODERS: dict[str, cabc.Callable[[str], object]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
}


def _encode_special(value: object) -> dict[str, str]:
    # datetime before date: a datetime is a date too.
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "value": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "value": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "value": str(value)}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "value": str(value)}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _decode_special(obj: dict[str, t.Any]) -> object:
    kind = obj.get(_TAG)
    if kind is not None and len(obj) == 2 and kind in _DECODERS:
        return _DECODERS[kind](obj["value"])
    return obj


_encoder = json.JSONEncoder(
    default=_encode_special, allow_nan=False, ensure_ascii=False, separators=(",", ":")
)


def dumps(value: object, *, what: str = "value") -> str:
    """Encode ``value``; on failure name the path of the offending part.

    :param what: how to name the root in the error, e.g. ``"the result"``.
    :raises SerializationError: with a message such as
        ``kwargs['user'] is a User, which cannot be stored as JSON``.
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as error:
        # The C encoder does not say where; walk once to find out (error path only).
        path, bad = _find_unencodable(value, what)
        raise SerializationError(
            f"{path} is {_describe(bad)}, which cannot be stored as JSON. Pass plain "
            "data (str, int, float, bool, None, list, dict, datetime, date, time, "
            "UUID, Decimal), e.g. an id instead of an object."
        ) from error


_decoder = json.JSONDecoder(object_hook=_decode_special)


def loads(text: str) -> t.Any:
    """Decode what :func:`dumps` wrote."""
    # One decoder for all: json.loads(object_hook=...) builds a new one per call,
    # which cost more than the decoding of a job's small payload.
    return _decoder.decode(text)


def dumps_call(args: cabc.Sequence[object], kwargs: cabc.Mapping[str, object]) -> str:
    """Encode a task call's arguments as ``{"args": [...], "kwargs": {...}}``."""
    try:
        return _encoder.encode({"args": args, "kwargs": kwargs})
    except (TypeError, ValueError):
        pass
    for index, arg in enumerate(args):
        dumps(arg, what=f"args[{index}]")
    for name, arg in kwargs.items():
        dumps(arg, what=f"kwargs[{name!r}]")
    raise AssertionError("unreachable: some argument failed to encode above")


def loads_call(text: str) -> tuple[list[t.Any], dict[str, t.Any]]:
    """Decode what :func:`dumps_call` wrote."""
    call = loads(text)
    return call["args"], call["kwargs"]


def _find_unencodable(value: object, path: str, depth: int = 0) -> tuple[str, object]:
    if depth > 100:  # json refuses circular structures; so do we, with a path
        return path, value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return f"{path} key {key!r}", key
            found = _find_unencodable(item, f"{path}[{key!r}]", depth + 1)
            if found[0]:
                return found
        return "", None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]", depth + 1)
            if found[0]:
                return found
        return "", None
    try:
        _encoder.encode(value)
    except (TypeError, ValueError):
        return path, value
    return "", None


def _describe(value: object) -> str:
    if isinstance(value, list | dict):
        return "a structure nested over 100 levels deep (circular?)"
    if isinstance(value, float):
        return f"the float {value!r}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"
