"""The embedded store (``sqlite:///path``): durable jobs with no broker.

Connection recipe (Huey's, tightened): one connection per thread, autocommit
(``isolation_level=None``) so each statement is its own transaction, WAL so readers
never block the writer, and a busy timeout so concurrent writers queue instead of
failing. Every state change is a single ``UPDATE … WHERE state = …`` statement; SQLite
takes the write lock before it reads, so a claim (``UPDATE … RETURNING``) is atomic
across threads and processes without an explicit ``BEGIN IMMEDIATE``.

Writers queue on a lock file beside the database (``<db>-lock``, ``flock``) before they
take SQLite's write lock, and new connections set themselves up under it (see
:data:`LOCK_SUFFIX`). Reads never take it.

Durability: ``synchronous=NORMAL`` by default (in WAL mode a commit survives a crash of
the process; a power loss may lose the last commits). Add ``?synchronous=FULL`` to the
URL to survive power loss too, at the cost of an fsync per commit; a busy worker makes
one commit per batch of jobs (:meth:`SqliteStore.complete_and_claim_many`).
"""

from __future__ import annotations

import builtins
import collections.abc as cabc
import dataclasses
import json
import logging
import operator
import os
import sqlite3
import threading
import time
import typing as t

try:
    import fcntl
except ImportError:  # Windows: writers wait in SQLite's busy handler (LOCK_SUFFIX)
    fcntl = None  # type: ignore[assignment]

from ..errors import ConfigurationError
from ..errors import StoreError
from ..records import ALL_CAPABILITIES
from ..records import claim_order
from ..records import JobRecord
from ..records import State
from ..records import TERMINAL
from .base import Batch
from .base import JobFilter
from .base import LOST_ERROR
from .base import LOST_WORKER_ATTEMPTS
from .base import Minute
from .base import Overview
from .base import Page
from .base import read_sections
from .base import roll_up_minutes
from .base import ROLLUP_LAG
from .base import SERIES_KEEP
from .base import Stats
from .base import WORKER_FORGET_AFTER
from .base import WorkerBeat

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION: t.Final = 4
#: Bytes per page of a new database file (see ``_connect``).
PAGE_SIZE: t.Final = 2048
#: Seconds between two recovery passes of one store (see ``QueueStore.claim``).
RECOVERY_INTERVAL: t.Final = 1.0
#: WAL pages after which a commit at NORMAL checkpoints (SQLite's default: 1,000).
NORMAL_CHECKPOINT_PAGES: t.Final = 10_000
#: The ``synchronous`` levels the store accepts, in any case. Not OFF (a crash of the
#: machine can corrupt the file) and not EXTRA (it only adds a sync of the folder on a
#: journal delete, which WAL mode never does): the two that remain are the two
#: promises ``docs/durability.rst`` makes, and the checkpoint tuning assumes one of them.
SYNCHRONOUS_LEVELS: t.Final = ("NORMAL", "FULL")

#: The lock file is the database's path plus this. Every write and every new
#: connection's setup holds it, so that our writers take turns in the order they came:
#: the kernel wakes the next one the moment it is let go. Without it, a writer that
#: finds SQLite's write lock taken sleeps in the busy handler (1, 2, 5, 10 … up to
#: 100 ms) and often finds it taken again: at FULL, where each enqueue holds the lock
#: through an fsync, a worker got almost no claim in while a producer ran, and when two
#: processes switch a new file to WAL at the same moment SQLite fails at once with
#: "database is locked". It costs a little throughput: with a producer and a worker at
#: NORMAL, about 12% fewer jobs per second than the busy handler's sleeps, which let one
#: side run several transactions in a row (each turn empties the other's page cache).
#: The busy timeout still applies to programs that do not use the lock file.
LOCK_SUFFIX: t.Final = "-lock"

logger = logging.getLogger(__name__)


_FIELDS: t.Final = tuple(field.name for field in dataclasses.fields(JobRecord))
_COLUMNS: t.Final = ", ".join(_FIELDS)


def _load_queries() -> dict[str, str]:
    queries = read_sections(__package__, "sqlite.sql", drop_comments=True)
    fragments = {
        "{columns}": _COLUMNS,
        "{placeholders}": ", ".join("?" * len(_FIELDS)),
        "{claim_order}": queries.pop("claim_order").strip(),
    }
    for name, sql in queries.items():
        for fragment, value in fragments.items():
            sql = sql.replace(fragment, value)
        queries[name] = sql.strip()
    return queries


_SQL: t.Final = _load_queries()
_MIGRATIONS: t.Final = [_SQL[f"migration_{number}"] for number in range(1, SCHEMA_VERSION + 1)]


#: A record's field values as a tuple, in ``_FIELDS`` order (one C call).
_field_values: t.Final = operator.attrgetter(*_FIELDS)


class _WriteLock:
    """One thread's handle on the store's lock file: ``with`` it around each write.

    Each thread opens the file itself: ``flock`` locks belong to an open file
    description, so threads sharing one descriptor would all "hold" the lock at once.
    ``fd`` is None without ``flock`` (Windows) or if the file cannot be opened; then
    writers wait in SQLite's busy handler, as before there was a lock file.
    """

    __slots__ = ("fd",)

    def __init__(self, path: str) -> None:
        self.fd: int | None = None
        if fcntl is None:
            return
        try:
            # Read-only is enough for flock, so a file another user created works too.
            self.fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            logger.warning(
                "Cannot open the job store's lock file %r (%s): writers will wait in "
                "SQLite's busy handler instead.",
                path,
                error,
            )
            return
        _LOCK_FDS.add(self.fd)

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            _LOCK_FDS.discard(self.fd)
            os.close(self.fd)
            self.fd = None


def _duplicate(job_id: str) -> StoreError:
    return StoreError(
        f"A job with the id {job_id!r} is stored already. Enqueue a record once; "
        "every new job gets a new id (flask_afterward.records.new_job_id)."
    )


def _record(row: tuple[t.Any, ...]) -> JobRecord:
    values = dict(zip(_FIELDS, row, strict=True))
    values["state"] = State(values["state"])
    values["is_cancel_requested"] = bool(values["is_cancel_requested"])
    return JobRecord(**values)


class SqliteStore:
    """Jobs in one SQLite file, shared by every thread and process that opens it.

    :param path: the database file; its folder is created if missing.
    :param defer_grace: seconds after which a deferred job is released anyway.
    :param synchronous: ``"NORMAL"`` (default) or ``"FULL"``, in any case.
    :param busy_timeout: seconds a writer waits for the lock before failing.
    """

    capabilities: t.ClassVar = ALL_CAPABILITIES
    #: One machine's file: never put it on a network file system.
    is_shared_across_machines: t.ClassVar = False

    def __init__(
        self,
        path: str,
        *,
        defer_grace: float = 60.0,
        synchronous: str = "NORMAL",
        busy_timeout: float = 10.0,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_LEVELS:
            raise ConfigurationError(
                f"AFTERWARD_STORE option synchronous={synchronous!r} is not valid: expected "
                f"{' or '.join(SYNCHRONOUS_LEVELS)} (in any case). Fix it in the store URL."
            )
        self.path = path
        #: the file our writers queue on (:data:`LOCK_SUFFIX`)
        self.lock_path = path + LOCK_SUFFIX
        self.defer_grace = defer_grace
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._next_recovery = 0.0
        self._all_connections: list[sqlite3.Connection] = []
        self._all_locks: list[_WriteLock] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fork_generation = _fork_generation
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # connections

    def _connect(self) -> sqlite3.Connection:
        with self._local.write_lock:
            return self._set_up(
                sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self.busy_timeout,
                    cached_statements=64,
                )
            )

    def _set_up(self, connection: sqlite3.Connection) -> sqlite3.Connection:
        try:
            # Only takes effect on a new, empty file. Every commit appends each page it
            # touched to the WAL; 2 KiB pages halve those bytes against the default
            # 4 KiB and raise enqueue and claim rates by about a third (measured on
            # schema 2; rows of a few KiB spill into overflow pages, which is fine).
            connection.execute(f"PRAGMA page_size={PAGE_SIZE}")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            if self.synchronous == "NORMAL":
                # At NORMAL the checkpoint's fsyncs are most of a writer's waits for the
                # disk, and a checkpoint copies a page once however many commits changed
                # it: fewer, larger ones (a WAL of up to ~20 MB) made enqueue ~15% faster.
                # At FULL every commit syncs anyway, and a WAL that keeps growing makes
                # each sync write the file's new size too: SQLite's default stays.
                connection.execute(f"PRAGMA wal_autocheckpoint={NORMAL_CHECKPOINT_PAGES}")
        except sqlite3.OperationalError:
            connection.close()  # e.g. locked: a real SQLite file, the caller's problem
            raise
        except sqlite3.DatabaseError as error:
            connection.close()
            raise ConfigurationError(
                f"AFTERWARD_STORE points at {self.path!r}, which is not a SQLite "
                f"database ({error}). Point it at a new file, or move that file away."
            ) from error
        return connection

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after a fork)."""
        if self._fork_generation != _fork_generation:
            # Connections inherited through fork() belong to the parent: never use or
            # close them here (closing could remove the parent's WAL); drop our
            # references without closing by keeping them alive in this process.
            _INHERITED.extend(self._all_connections)
            self._all_connections = []
            self._all_locks = []  # their descriptors were closed at the fork
            self._local = threading.local()
            self._lock = threading.Lock()  # another thread may have held it at fork()
            self._pid = os.getpid()
            self._fork_generation = _fork_generation
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            local = self._local
            folder = os.path.dirname(self.path)
            if folder:
                # Before the lock file, which lives in it (a new app's instance folder).
                os.makedirs(folder, exist_ok=True)
            local.write_lock = _WriteLock(self.lock_path)
            try:
                connection = local.connection = self._connect()
            except BaseException:
                local.write_lock.close()
                raise
            with self._lock:
                self._all_connections.append(connection)
                self._all_locks.append(local.write_lock)
        return connection

    @property
    def _writing(self) -> _WriteLock:
        """This thread's write lock; after ``_db``, which opens it and sees forks."""
        lock: _WriteLock = self._local.write_lock
        return lock

    def _migrate(self) -> None:
        db = self._db
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"The job store {self.path!r} has schema version {version}, newer than "
                f"this flask-afterward understands ({SCHEMA_VERSION}). Upgrade it."
            )
        if version == SCHEMA_VERSION:
            return
        with self._writing:
            self._migrate_now(db)

    def _migrate_now(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()  # another process?
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(_MIGRATIONS[number]):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            connections, self._all_connections = self._all_connections, []
            locks, self._all_locks = self._all_locks, []
        if self._pid == os.getpid():
            for connection in connections:
                connection.close()
            for lock in locks:
                lock.close()
        self._local = threading.local()

    # Store

    def enqueue(self, record: JobRecord) -> JobRecord:
        # Not dataclasses.asdict: it deep-copies every field, and cost more than the
        # INSERT itself.
        if record.state in TERMINAL and record.secrets is not None:
            record = record.replace(secrets=None)
        db = self._db
        row = (*_field_values(record), record.expires_at)
        if record.unique_key is None:
            try:
                with self._writing:
                    db.execute(_SQL["insert_plain"], row)
            except sqlite3.IntegrityError as error:
                raise _duplicate(record.id) from error
            return record
        values = (*row, record.unique_key)
        for _ in range(3):
            with self._writing:
                is_stored = db.execute(_SQL["insert"], values).rowcount == 1
            if is_stored:
                return record
            # Ignored: an active job holds the unique key. Return it (it may have
            # finished meanwhile, then try again).
            holder = self._db.execute(
                _SQL["get_active_unique"], {"unique_key": record.unique_key}
            ).fetchone()
            if holder is not None:
                return _record(holder)
        # Each try was refused, yet no active job held the key when looked up.
        raise StoreError(
            f"Could not store job {record.id} with unique key {record.unique_key!r}: three "
            "inserts were refused without an active job holding the key. Either a job "
            "with this id is stored already (enqueue a record once; new ones get a new "
            "id), or jobs with this key finish as fast as they are enqueued (enqueue "
            "it again)."
        )

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(_SQL["get"], {"id": job_id, "now": time.time()}).fetchone()
        return None if row is None else _record(row)

    def list(
        self,
        *,
        state: State | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobRecord]:
        params = {
            "state": None if state is None else str(state),
            "queue": queue,
            "task": task,
            "now": time.time(),
            "limit": limit,
            "offset": offset,
        }
        return [_record(row) for row in self._db.execute(_SQL["list"], params)]

    def _write(self, query: str, params: dict[str, object]) -> int:
        """Run one writing statement under the write lock; the rows it changed."""
        db = self._db
        with self._writing:
            return db.execute(_SQL[query], params).rowcount

    def cancel(self, job_id: str) -> bool:
        params = {"id": job_id, "now": time.time()}
        if self._write("cancel_waiting", params):
            return True
        return self._write("request_cancel", params) == 1

    def release_deferred(self, job_ids: cabc.Iterable[str]) -> None:
        self._write("release_deferred", {"ids": json.dumps(list(job_ids))})

    def retry(self, job_id: str) -> bool:
        return self._write("retry", {"id": job_id, "now": time.time()}) == 1

    def prune(self, now: float) -> int:
        return self._write("prune", {"now": now})

    def stats(self, since: float) -> Stats:
        now = time.time()
        counts = {
            (queue, State(state)): count
            for queue, state, count in self._db.execute(
                _SQL["count_by_queue_and_state"], {"now": now}
            )
        }
        finished = {
            State(state): count
            for state, count in self._db.execute(
                _SQL["count_finished_since"], {"since": since, "now": now}
            )
        }
        return Stats(counts, finished)

    # Attempts

    def start(self, job_id: str, worker: str, lease: float) -> JobRecord | None:
        params = {"id": job_id, "worker": worker, "now": time.time(), "lease": lease}
        db = self._db
        with self._writing:
            rows = db.execute(_SQL["start"], params).fetchall()
        return _record(rows[0]) if rows else None

    # QueueStore

    def _claim(
        self,
        db: sqlite3.Connection,
        worker: str,
        queues: cabc.Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> builtins.list[JobRecord]:
        now = time.time()
        if now >= self._next_recovery:
            self._next_recovery = now + RECOVERY_INTERVAL
            self._recover(db, now)
        if limit < 1:
            return []
        params: dict[str, object] = {"worker": worker, "now": now, "lease": lease, "limit": limit}
        if queues is None:
            query = _SQL["claim_any"]
        else:
            query, params["queues"] = _SQL["claim_from_queues"], json.dumps(list(queues))
        # fetchall: run the statement to its end, so that it commits now. RETURNING
        # keeps no order: put the best job first again.
        records = [_record(row) for row in db.execute(query, params).fetchall()]
        if len(records) > 1:
            records.sort(key=claim_order)
        return records

    def complete_and_claim_many(
        self,
        done: cabc.Sequence[tuple[str, str | None]],
        worker: str,
        queues: cabc.Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> Batch:
        """See :meth:`QueueStore.complete_and_claim_many`: one commit for all of it.

        At FULL that is one fsync for a whole batch of outcomes and claims, which is
        how a busy worker beats one commit per state change without syncing less.
        """
        db = self._db
        with self._writing:
            db.execute("BEGIN IMMEDIATE")
            try:
                completed = [
                    self._own_in(db, "complete", job_id, worker, result=result)
                    for job_id, result in done
                ]
                claimed = self._claim(db, worker, queues, lease, limit)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return completed, claimed

    def recover(self, now: float) -> None:
        """Release overdue deferred jobs and jobs whose worker lost its lease."""
        db = self._db
        with self._writing:
            self._recover(db, now)

    def _recover(self, db: sqlite3.Connection, now: float) -> None:
        db.execute(_SQL["release_overdue_deferred"], {"cutoff": now - self.defer_grace})
        db.execute(
            _SQL["fail_lost"],
            {"now": now, "error": LOST_ERROR, "lost_attempts": LOST_WORKER_ATTEMPTS},
        )
        db.execute(_SQL["requeue_lost"], {"now": now})

    def _own_in(
        self, db: sqlite3.Connection, query: str, job_id: str, worker: str, **params: object
    ) -> bool:
        """Run a statement that changes a job only while ``worker`` holds it."""
        params.update(id=job_id, worker=worker, now=time.time())
        return db.execute(_SQL[query], params).rowcount == 1

    def _own(self, query: str, job_id: str, worker: str, **params: object) -> bool:
        db = self._db
        with self._writing:
            return self._own_in(db, query, job_id, worker, **params)

    def extend_lease(self, job_id: str, worker: str, lease: float) -> bool:
        return self._own("extend_lease", job_id, worker, lease=lease)

    def complete(self, job_id: str, worker: str, result: str | None) -> bool:
        return self._own("complete", job_id, worker, result=result)

    def fail(self, job_id: str, worker: str, error: str, retry_at: float | None) -> bool:
        if retry_at is None:
            return self._own("fail", job_id, worker, error=error)
        return self._own("fail_for_retry", job_id, worker, error=error, retry_at=retry_at)

    def requeue(self, job_id: str, worker: str) -> bool:
        return self._own("requeue", job_id, worker)

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        return self._own("mark_cancelled", job_id, worker)

    def set_progress(self, job_id: str, worker: str, value: float, message: str | None) -> bool:
        params = {"id": job_id, "worker": worker, "progress": value, "message": message}
        db = self._db
        with self._writing:
            rows = db.execute(_SQL["set_progress"], params).fetchall()
        return bool(rows and rows[0][0])

    # Dashboard (ObservableStore; see "Dashboard queries" in docs/engines.rst)

    def overview(self, now: float) -> Overview:
        counts: dict[tuple[str, str], int] = {}
        for queue, state, count in self._db.execute(_SQL["dash_counts"], {"now": now}):
            counts[queue, state] = counts.get((queue, state), 0) + count
        oldest = dict(self._db.execute(_SQL["dash_oldest_runnable"], {"now": now}).fetchall())
        return Overview(counts, oldest)

    def browse(
        self, where: JobFilter, *, limit: int = 50, cursor: str | None = None, now: float
    ) -> Page:
        sql, params = _dash_where("dash_select", where, now)
        if cursor is not None:
            key, _, rowid = cursor.partition(":")
            params["key"], params["rowid"] = float(key), int(rowid)
            sql += "\n" + _SQL["dash_after_finished" if where.is_finished else "dash_after"]
        sql += "\n" + _SQL["dash_order_finished" if where.is_finished else "dash_order"]
        sql += "\nLIMIT :limit"
        params["limit"] = limit + 1
        rows = self._db.execute(sql, params).fetchall()
        records = [_record(row[:-1]) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            finished_at = records[-1].finished_at if where.is_finished else 0.0
            next_cursor = f"{finished_at!r}:{last[-1]}"
        return Page(records, next_cursor)

    def _matching_ids(self, where: JobFilter, now: float) -> builtins.list[str]:
        sql, params = _dash_where("dash_select_ids", where, now)
        return [job_id for _, job_id in self._db.execute(sql, params)]

    def delete(self, job_id: str) -> bool:
        return self._write("dash_delete", {"id": job_id}) == 1

    def _each(self, query: str, job_ids: builtins.list[str], now: float) -> int:
        """Run ``query`` for each id in one transaction; how many rows it changed."""
        db = self._db
        changed = 0
        with self._writing:
            db.execute("BEGIN IMMEDIATE")
            try:
                for job_id in job_ids:
                    changed += db.execute(_SQL[query], {"id": job_id, "now": now}).rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return changed

    def retry_matching(self, where: JobFilter, now: float) -> int:
        # One job at a time (in one transaction): two failed jobs may share a unique
        # key, and only the first of them may be queued again.
        return self._each("retry", self._matching_ids(where, now), now)

    def cancel_matching(self, where: JobFilter, now: float) -> int:
        ids = self._matching_ids(where, now)
        return self._each("cancel_waiting", ids, now) + self._each("request_cancel", ids, now)

    def delete_matching(self, where: JobFilter, now: float) -> int:
        return self._each("dash_delete", self._matching_ids(where, now), now)

    def heartbeat(self, beats: cabc.Sequence[WorkerBeat]) -> None:
        if not beats:
            return
        rows = [
            {
                **dataclasses.asdict(beat),
                "queues": None if beat.queues is None else json.dumps(beat.queues),
            }
            for beat in beats
        ]
        db = self._db
        with self._writing:
            db.executemany(_SQL["dash_heartbeat"], rows)

    def workers(self) -> builtins.list[WorkerBeat]:
        return [
            WorkerBeat(
                id=row[0],
                host=row[1],
                pid=row[2],
                thread=row[3],
                queues=None if row[4] is None else tuple(json.loads(row[4])),
                job_id=row[5],
                seen_at=row[6],
            )
            for row in self._db.execute(_SQL["dash_workers"])
        ]

    def rollup(self, now: float) -> None:
        self._index_for_search()
        due = getattr(self, "_next_rollup", 0.0)
        if now < due:
            return
        self._next_rollup = (now // 60 + 1) * 60 + ROLLUP_LAG
        db = self._db
        (rolled_to,) = db.execute(_SQL["dash_get_mark"], {"name": "rolled_to"}).fetchone()
        start = max(rolled_to, (now - SERIES_KEEP) // 60 * 60)
        end = (now - ROLLUP_LAG) // 60 * 60
        if end > start:
            finished = db.execute(
                _SQL["dash_finished_between"], {"start": start, "end": end}
            ).fetchall()
            minutes = [dataclasses.asdict(minute) for minute in roll_up_minutes(finished)]
            with self._writing:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(_SQL["dash_insert_minute"], minutes)
                    db.execute(_SQL["dash_set_mark"], {"name": "rolled_to", "value": end})
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        with self._writing:
            db.execute(_SQL["dash_prune_minutes"], {"before": now - SERIES_KEEP})
            db.execute(_SQL["dash_forget_workers"], {"before": now - WORKER_FORGET_AFTER})

    def _index_for_search(self, batch: int = 10_000) -> None:
        """Add the next ``batch`` new rows to the search index, in one transaction
        (FTS5 writes a batch far cheaper than one row per enqueue would cost)."""
        db = self._db
        (mark,) = db.execute(_SQL["dash_get_mark"], {"name": "indexed_to"}).fetchone()
        (newest,) = db.execute(_SQL["dash_max_rowid"]).fetchone()
        if newest <= mark:
            return
        with self._writing:
            db.execute("BEGIN IMMEDIATE")
            try:
                (mark,) = db.execute(_SQL["dash_get_mark"], {"name": "indexed_to"}).fetchone()
                (to,) = db.execute(_SQL["dash_index_to"], {"mark": mark, "limit": batch}).fetchone()
                if to is not None:
                    db.execute(_SQL["dash_index_new"], {"mark": mark, "to": to})
                    db.execute(_SQL["dash_set_mark"], {"name": "indexed_to", "value": to})
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def series(self, since: float) -> builtins.list[Minute]:
        return [
            Minute(minute, queue, State(state), count, p50, p95, p99)
            for minute, queue, state, count, p50, p95, p99 in self._db.execute(
                _SQL["dash_series"], {"since": since}
            )
        ]


def _dash_where(select: str, where: JobFilter, now: float) -> tuple[str, dict[str, t.Any]]:
    """The dashboard's ``SELECT … WHERE`` for ``where``, from fixed fragments only."""
    parts = [_SQL[select]]
    params: dict[str, t.Any] = {"now": now}
    if where.state is not None:
        if where.is_finished:
            parts.append(_SQL["dash_state_finished"])
            params["state"] = where.state
        else:
            parts.append(_SQL[f"dash_state_{where.state}"])
    if where.queue is not None:
        parts.append(_SQL["dash_queue"])
        params["queue"] = where.queue
    if where.task is not None:
        parts.append(_SQL["dash_task"])
        params["task"] = where.task
    if where.search is not None:
        parts.append(_SQL["dash_search"])
        params["match"] = '"' + where.search.replace('"', '""') + '"'
        params["needle"] = where.search.lower()
    return "\n".join(parts), params


def _statements(script: str) -> cabc.Iterator[str]:
    """The statements of a migration: split at ``;`` but keep a trigger's body whole
    (``sqlite3.complete_statement`` knows where a ``CREATE TRIGGER … END;`` ends)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                yield buffer
            buffer = ""


# Connections a forked child inherited: kept referenced so they are never closed there.
_INHERITED: list[sqlite3.Connection] = []


# Lock-file descriptors open in this process. A forked child closes the ones it
# inherited at once: they share the parent's open file descriptions, so a lock the
# parent held at the fork would stay held for as long as the child kept them (closing
# a flock descriptor, unlike a SQLite connection, cannot disturb the parent).
_LOCK_FDS: set[int] = set()

# Bumped in every forked child, so a store sees a fork with one global read per
# statement instead of an os.getpid() system call.
_fork_generation = 0


def _count_fork() -> None:
    global _fork_generation
    _fork_generation += 1
    for fd in _LOCK_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_count_fork)
