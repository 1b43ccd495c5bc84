"""The networked store of record (``redis://host:port/db``, ``rediss://`` for TLS).

Web and worker processes on any number of machines share one Redis: it is the first
store that is ``is_shared_across_machines``, and what the tier-3 executors record
their attempts in. Every state change is one Lua script (``redis.lua``, registered
once per client): Redis runs a script alone, so an enqueue with a ``unique`` key, a
claim of a batch, ``start`` and each lease-holder-only update are atomic across every
client, with no lock and no retry loop.

Data layout, every key under ``{prefix}:`` (``?prefix=``, default ``afterward``):

``job:{id}``             a hash: the :class:`~flask_afterward.records.JobRecord` fields
                         as text (a field that is None is absent)
``jobs``                 zset id → enqueue sequence (``seq``, a counter): newest-first
                         listing, paged by score (keyset), so concurrent enqueues do
                         not shift the pages
``ready:{queue}:{prio}`` zset id → ``run_at``: queued jobs of one queue and priority
``levels:{queue}``       zset of the priorities that queue has queued jobs at
``queues``               set of the queues that have queued jobs
``deferred``             zset id → ``run_at``: for the defer grace
``running``              zset id → ``lease_until``: for recovery of lost leases
``finished``             zset id → ``expires_at``: for prune, and expiry before it
``done``                 zset id → ``finished_at``: "finished since" in stats
``unique:{key}``         the id of the active job holding the key; deleted when the
                         job finishes, so a key is held only while a job is active
``counts``               hash ``"{state}:{queue}"`` → jobs: stats without a scan

Why one zset per priority and not one score for both: a zset score is a double (53
bits), and ``run_at`` to the microsecond already takes 51, so a score mixing priority
and ``run_at`` would reorder jobs a few microseconds apart. With a zset per level the
score is ``run_at`` exactly and a claim walks the levels from the highest down (few,
in practice); future jobs stay in the same zset and are skipped by a
``ZRANGEBYSCORE … -inf now``, so nothing has to move a job when it becomes due.

Times are the clients' ``time.time()``, as with sqlite: machines sharing a Redis
need synchronized clocks (NTP), since one machine's lease is judged by another's
recovery. Durability is Redis's: a Redis without AOF or RDB loses every job when it
restarts (``appendonly yes`` is the setting to use; see ``docs/engines.rst``).
Scripts compute key names from the prefix, so Redis Cluster is not supported; use
one primary (with Sentinel or a managed failover if you need one).

Connections: one redis-py client per store, thread-safe with its pool; the pool sees
a fork by its pid and opens new sockets in the child, never the parent's.
"""

from __future__ import annotations

import builtins
import collections.abc as cabc
import dataclasses
import json
import time
import typing as t
import urllib.parse

from ..errors import ConfigurationError
from ..errors import MissingDependency
from ..errors import StoreError
from ..records import ALL_CAPABILITIES
from ..records import JobRecord
from ..records import State
from ..records import TERMINAL
from .base import Batch
from .base import LOST_ERROR
from .base import LOST_WORKER_ATTEMPTS
from .base import read_sections
from .base import Stats

try:
    import redis
except ImportError as error:
    raise MissingDependency(
        "AFTERWARD_STORE names a Redis store, which needs redis-py: "
        "pip install flask-afterward[redis]"
    ) from error

#: Seconds between two recovery passes run by one store's claims.
RECOVERY_INTERVAL: t.Final = 1.0
#: Jobs read per round trip while listing, and deleted per script while pruning (a
#: script blocks Redis while it runs: keep each one short).
CHUNK: t.Final = 500

_FIELDS: t.Final = tuple(field.name for field in dataclasses.fields(JobRecord))
_DECODERS: t.Final[dict[str, cabc.Callable[[str], t.Any]]] = {name: str for name in _FIELDS} | {
    "state": State,
    "priority": int,
    "attempts": int,
    "max_retries": int,
    "is_cancel_requested": lambda text: text == "1",
    **dict.fromkeys(
        (
            "retry_backoff",
            "timeout",
            "result_ttl",
            "created_at",
            "run_at",
            "started_at",
            "finished_at",
            "lease_until",
            "progress",
        ),
        float,
    ),
}


def _load_scripts() -> dict[str, str]:
    scripts = read_sections(__package__, "redis.lua", drop_comments=False)
    common = scripts.pop("common")
    return {name: common + body for name, body in scripts.items()}


_LUA: t.Final = _load_scripts()


def _text(value: float | str) -> str:
    """A value as stored: ``repr`` of a float reads back as the same float."""
    return repr(value) if isinstance(value, float) else str(value)


def _encode(record: JobRecord) -> str:
    """The record's fields as stored, in one JSON object; None fields are left out."""
    fields: dict[str, str] = {}
    for name in _FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        fields[name] = _text(value)
    return json.dumps(fields)


def _decode(pairs: cabc.Mapping[str, str] | str) -> JobRecord:
    """A record from ``HGETALL`` (a mapping) or a script (its fields as a JSON object)."""
    if isinstance(pairs, str):
        pairs = json.loads(pairs)
        assert isinstance(pairs, dict)
    return JobRecord(
        **{name: _DECODERS[name](text) for name, text in pairs.items() if name in _DECODERS}
    )


def _is_expired(finished_at: str | None, result_ttl: str | None, now: float) -> bool:
    return finished_at is not None and float(finished_at) + float(result_ttl or 0) <= now


def _redacted(url: str) -> str:
    """The URL without its password, to name it in an error."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class RedisStore:
    """Jobs in one Redis, shared by every process on every machine that opens it.

    :param url: a redis-py URL (``redis://``, ``rediss://``), without our options.
    :param prefix: the first part of every key, so several apps can share a database.
    :param defer_grace: seconds after which a deferred job is released anyway.
    :param timeout: seconds to wait for Redis to connect or answer.
    :raises ConfigurationError: if Redis does not answer now.
    """

    capabilities: t.ClassVar = ALL_CAPABILITIES
    is_shared_across_machines: t.ClassVar = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "afterward",
        defer_grace: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.defer_grace = defer_grace
        self._next_recovery = 0.0
        self._client: redis.Redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._scripts = {name: self._client.register_script(lua) for name, lua in _LUA.items()}
        try:
            self._client.ping()
        except redis.RedisError as error:
            self.close()
            raise ConfigurationError(
                f"AFTERWARD_STORE = {_redacted(url)!r} cannot be reached ({error}). Start "
                "Redis there, or point AFTERWARD_STORE at a Redis this machine can reach."
            ) from error

    def _run(self, script: str, *args: float | str) -> t.Any:
        return self._scripts[script](args=[self.prefix, *map(_text, args)])

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def close(self) -> None:
        # Only the sockets: the pool opens new ones if the store is used again, as
        # the extension does after validating it at init_app.
        self._client.connection_pool.disconnect()

    # Store

    def enqueue(self, record: JobRecord) -> JobRecord:
        if record.state in TERMINAL and record.secrets is not None:
            record = record.replace(secrets=None)
        holder = self._run("enqueue", _encode(record))
        if holder == "duplicate":
            raise StoreError(
                f"A job with the id {record.id!r} is stored already. Enqueue a record "
                "once; every new job gets a new id (flask_afterward.records.new_job_id)."
            )
        return record if holder is None else _decode(holder)

    def get(self, job_id: str) -> JobRecord | None:
        pairs = t.cast(dict[str, str], self._client.hgetall(self._key(f"job:{job_id}")))
        if not pairs or _is_expired(pairs.get("finished_at"), pairs.get("result_ttl"), time.time()):
            return None
        return _decode(pairs)

    def list(
        self,
        *,
        state: State | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[JobRecord]:
        wanted = {"state": state, "queue": queue, "task": task}
        filters = [(i, value) for i, value in enumerate(wanted.values()) if value is not None]
        now = time.time()
        found: builtins.list[str] = []
        below = "+inf"
        while limit > 0 and len(found) < offset + limit:
            page = t.cast(
                builtins.list[tuple[str, float]],
                self._client.zrevrangebyscore(
                    self._key("jobs"), below, "-inf", start=0, num=CHUNK, withscores=True
                ),
            )
            if not page:
                break
            below = f"({page[-1][1]!r}"
            pipe = self._client.pipeline(transaction=False)
            for job_id, _ in page:
                pipe.hmget(self._key(f"job:{job_id}"), *wanted, "finished_at", "result_ttl")
            for (job_id, _), values in zip(page, pipe.execute(), strict=True):
                if (
                    values[0] is not None
                    and all(values[i] == value for i, value in filters)
                    and not _is_expired(values[3], values[4], now)
                ):
                    found.append(job_id)
        pipe = self._client.pipeline(transaction=False)
        for job_id in found[offset : offset + limit]:
            pipe.hgetall(self._key(f"job:{job_id}"))
        return [_decode(pairs) for pairs in pipe.execute() if pairs]

    def cancel(self, job_id: str) -> bool:
        return bool(self._run("cancel", job_id, time.time()))

    def release_deferred(self, job_ids: cabc.Iterable[str]) -> None:
        ids = builtins.list(job_ids)
        if ids:
            self._run("release_deferred", *ids)

    def retry(self, job_id: str) -> bool:
        return bool(self._run("retry", job_id, time.time()))

    def prune(self, now: float) -> int:
        pruned = 0
        while (deleted := int(self._run("prune", now, CHUNK))) == CHUNK:
            pruned += deleted
        return pruned + deleted

    def stats(self, since: float) -> Stats:
        counters, expired, finished_states = self._run("stats", time.time(), since)
        counts: dict[tuple[str, State], int] = {}
        for field, value in zip(counters[::2], counters[1::2], strict=True):
            state, _, queue = field.partition(":")
            counts[queue, State(state)] = int(value)
        for field in expired:
            state, _, queue = field.partition(":")
            counts[queue, State(state)] -= 1
        finished: dict[State, int] = {}
        for state in finished_states:
            finished[State(state)] = finished.get(State(state), 0) + 1
        return Stats({key: n for key, n in counts.items() if n > 0}, finished)

    # Attempts

    def start(self, job_id: str, worker: str, lease: float) -> JobRecord | None:
        now = time.time()
        pairs = self._run("start", job_id, worker, now, now + lease)
        return None if pairs is None else _decode(pairs)

    def _own(self, job_id: str, worker: str, operation: str, *values: float | str) -> int:
        return int(self._run("own", job_id, worker, time.time(), operation, *values))

    def extend_lease(self, job_id: str, worker: str, lease: float) -> bool:
        return self._own(job_id, worker, "extend", time.time() + lease) == 1

    def complete(self, job_id: str, worker: str, result: str | None) -> bool:
        values = () if result is None else (result,)
        return self._own(job_id, worker, "complete", *values) == 1

    def fail(self, job_id: str, worker: str, error: str, retry_at: float | None) -> bool:
        if retry_at is None:
            return self._own(job_id, worker, "fail", error) == 1
        return self._own(job_id, worker, "fail_for_retry", error, retry_at) == 1

    def requeue(self, job_id: str, worker: str) -> bool:
        return self._own(job_id, worker, "requeue") == 1

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        return self._own(job_id, worker, "mark_cancelled") == 1

    def set_progress(self, job_id: str, worker: str, value: float, message: str | None) -> bool:
        extra = () if message is None else (message,)
        return self._own(job_id, worker, "progress", float(value), *extra) == 2

    # QueueStore

    def recover(self, now: float) -> None:
        self._run("recover", now, now - self.defer_grace, LOST_WORKER_ATTEMPTS, LOST_ERROR)

    def complete_and_claim_many(
        self,
        done: cabc.Sequence[tuple[str, str | None]],
        worker: str,
        queues: cabc.Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> Batch:
        now = time.time()
        is_recovering = now >= self._next_recovery
        if is_recovering:
            self._next_recovery = now + RECOVERY_INTERVAL
        args: builtins.list[float | str] = [
            worker,
            now,
            now + lease,
            max(limit, 0),
            int(is_recovering),
            now - self.defer_grace,
            LOST_WORKER_ATTEMPTS,
            LOST_ERROR,
            len(done),
        ]
        for job_id, result in done:
            args += (job_id, 0, "") if result is None else (job_id, 1, result)
        if queues is None:
            args.append(0)
        else:
            args += (1, *dict.fromkeys(queues))
        completed, claimed = self._run("complete_and_claim_many", *args)
        return [flag == 1 for flag in completed], [_decode(pairs) for pairs in claimed]
