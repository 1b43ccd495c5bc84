"""The store of record: the ``Store`` and ``QueueStore`` protocols, and their contract.

A store is the *system of record* on every tier: job state, progress, results and
their TTL, ``unique`` keys and secrets live there, and the ``Job`` handle, the HTTP API
and the CLI read it. Who *runs* a job is another question, answered by an executor
(``executors.py``): our worker threads, eager mode, and later Celery or RQ, which carry
only the job id and record the attempt here through :meth:`Store.start` and the
methods after it. So every store implements :class:`Store` whole, and the executors
share one attempt runner (``runner.py``).

:class:`QueueStore` adds what our own pull :class:`~flask_afterward.worker.Worker`
needs: claim the next runnable jobs, and recover jobs stuck by a vanished process.
Every store we ship (memory, sqlite, redis) is a queue store.

Capabilities: a store lists what it honours in ``capabilities`` (see
:class:`~flask_afterward.records.Capability`); memory, sqlite and redis honour
everything. ``is_shared_across_machines`` says whether web and worker processes on
*different* machines may use it: memory lives in one process and sqlite in one
machine's file system (never on a network file system); redis is shared.

Times are Unix timestamps (floats). Every method is atomic on its own and safe to call
from several threads; stores that share a file across processes (sqlite) are safe
across processes too.

A finished job never holds ``secrets``: every transition into succeeded, failed or
cancelled wipes them, and a finished record given to ``enqueue`` is stored without.

Only the lease holder (``worker``) may record an attempt: ``extend_lease``,
``complete``, ``fail``, ``requeue``, ``mark_cancelled`` and ``set_progress`` return
False, and change nothing, when the job is not running under that worker any more
(its lease expired and another worker took it, or a timeout failed it).
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import importlib.resources
import logging
import math
import time
import typing as t

from ..records import Capability
from ..records import JobRecord
from ..records import State

#: Extra attempts a job gets when its worker vanished (lease expired), beyond its
#: retries: a crash is not the job's fault, but a job that kills every worker that
#: runs it must stop somewhere.
LOST_WORKER_ATTEMPTS: t.Final = 2

#: The error text of a job whose worker vanished too often.
LOST_ERROR = (
    "flask_afterward.errors.WorkerLost: the job's worker stopped holding its lease "
    "(killed or stuck) on every attempt; it was not retried again."
)


#: What :meth:`QueueStore.complete_and_claim_many` returns: whether each success was
#: recorded, and the jobs claimed, best first.
Batch: t.TypeAlias = tuple[list[bool], list[JobRecord]]


def read_sections(package: str, filename: str, *, drop_comments: bool) -> dict[str, str]:
    """The named sections of a query file shipped beside a store, procrastinate-style:
    each starts at a ``-- name --`` line and runs to the next one. With
    ``drop_comments``, other full-line ``--`` comments are left out too."""
    text = importlib.resources.files(package).joinpath(filename).read_text()
    sections: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("-- ") and line.endswith(" --") and " " not in line[3:-3]:
            name = line[3:-3]
            sections[name] = ""
        elif name is not None and not (drop_comments and line.startswith("--")):
            sections[name] += line + "\n"
    return sections


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """Counts for ``flask afterward stats``."""

    #: jobs per ``(queue, state)``
    counts: dict[tuple[str, State], int]
    #: jobs finished since the ``since`` given, per terminal state
    finished: dict[State, int]


@t.runtime_checkable
class Store(t.Protocol):
    """Where jobs live: the system of record, whoever runs them."""

    #: What this store honours; an option needing anything else is refused.
    capabilities: t.ClassVar[frozenset[Capability]]
    #: Whether processes on several machines may share it (see the module docs).
    is_shared_across_machines: t.ClassVar[bool]

    def enqueue(self, record: JobRecord) -> JobRecord:
        """Store a new job and return what was stored.

        If ``record.unique_key`` is set and an active (deferred, queued or running)
        job holds that key, nothing is stored and that job's record is returned, whatever
        the state of ``record``. A finished ``record`` is stored as given, less its
        ``secrets``. An id that is stored already raises
        :class:`~flask_afterward.errors.StoreError` and changes nothing.
        """
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if the id is unknown or the job has expired."""
        ...

    def list(
        self,
        *,
        state: State | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Unexpired jobs matching every filter given, newest first (the most recently
        enqueued first), skipping ``offset`` and returning at most ``limit``."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Cancel a job. Deferred or queued → cancelled at once; running → the cancel
        is requested (the worker stops it at its next ``progress()``). False if the job
        is unknown or already finished."""
        ...

    def release_deferred(self, job_ids: cabc.Iterable[str]) -> None:
        """Make these deferred jobs queued (their response was delivered). Jobs in any
        other state are left alone."""
        ...

    def retry(self, job_id: str) -> bool:
        """Queue a failed or cancelled job again, as new: runnable now, with attempts,
        times, worker, progress, error, result and the cancel request cleared. False,
        and nothing changed, if it is unknown, expired, not failed/cancelled, or if an
        active job now holds its ``unique_key``."""
        ...

    def prune(self, now: float) -> int:
        """Delete finished jobs whose result TTL ran out by ``now``; return how many."""
        ...

    def stats(self, since: float) -> Stats:
        """Counts per queue and state, and jobs finished since ``since``."""
        ...

    def start(self, job_id: str, worker: str, lease: float) -> JobRecord | None:
        """Take this queued job for ``lease`` seconds: queued → running under
        ``worker``, attempts + 1, whatever its ``run_at`` (the executor decided it is
        due). None, and nothing changed, if it is not queued (unknown, expired,
        deferred, cancelled, finished, or running under someone else).

        How an executor that is handed a job id (eager mode, Celery, RQ) begins an
        attempt; a delivery of the same id twice starts it once.
        """
        ...

    def extend_lease(self, job_id: str, worker: str, lease: float) -> bool:
        """Hold the job ``lease`` more seconds from now. False if it is no longer ours."""
        ...

    def complete(self, job_id: str, worker: str, result: str | None) -> bool:
        """running → succeeded, with the JSON ``result`` and progress 1.0."""
        ...

    def fail(self, job_id: str, worker: str, error: str, retry_at: float | None) -> bool:
        """running → queued at ``retry_at`` (a retry), or → failed when it is None."""
        ...

    def requeue(self, job_id: str, worker: str) -> bool:
        """running → queued now, the attempt not counted (the worker is shutting down)."""
        ...

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        """running → cancelled (the job honoured a cancel request)."""
        ...

    def set_progress(self, job_id: str, worker: str, value: float, message: str | None) -> bool:
        """Record progress of a job running under ``worker``. Returns True if a cancel
        was requested. A worker that lost the job changes nothing and gets False."""
        ...

    def close(self) -> None:
        """Release every connection (and lock file) the store holds, in all threads.

        Like SQLAlchemy's ``Engine.dispose()``, it does not end the store: a later call
        connects again, in the thread that makes it. ``init_app`` relies on that: it
        opens the store to validate the URL at once, then closes it, so that a server
        forking after ``init_app`` (gunicorn ``--preload``) hands its children no
        connection. Call it only when no other thread is using the store.
        """
        ...


@t.runtime_checkable
class QueueStore(Store, t.Protocol):
    """A store our own worker pulls jobs from (sqlite, memory)."""

    def recover(self, now: float) -> None:
        """Recover jobs stuck in a state by a vanished process, as of ``now``.

        Deferred jobs whose ``run_at`` is older than the defer grace become queued
        (their request process died before releasing them). Running jobs whose lease
        ran out by ``now`` become queued, runnable at ``now`` (their worker died or
        hung), or failed with :data:`LOST_ERROR` once they used
        ``max_retries + 1 + LOST_WORKER_ATTEMPTS`` attempts. Claims run it
        themselves from time to time; call it to recover at once (tests, a sweeper).
        """
        ...

    def complete_and_claim_many(
        self,
        done: cabc.Sequence[tuple[str, str | None]],
        worker: str,
        queues: cabc.Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> Batch:
        """:meth:`complete` each ``(job_id, result)`` of ``done``, then claim up to
        ``limit`` runnable jobs (0: none), in one transaction where the store has them.

        Runnable: queued with ``run_at`` due, in one of ``queues`` (None: any). The best
        come first: highest priority, then oldest ``run_at``
        (:func:`~flask_afterward.records.claim_order`). A claimed job becomes running
        under ``worker`` for ``lease`` seconds from now, its attempts grow by one; two
        claims never return the same job while its lease holds. A job claimed before
        (a retry, a recovered one) is only ever claimed alone, so a job that kills its
        worker cannot use up the attempts of jobs batched with it. From time to time
        a claim also runs :meth:`recover`.

        Returns what each :meth:`complete` returned, and the jobs claimed, best first.
        """
        ...


# -- Dashboard queries ----------------------------------------------------------------
#
# What the dashboard reads and does besides the protocols above. Kept in a protocol of
# its own, so that a store without it (Celery, RQ) still serves jobs, only without a
# dashboard; see "Dashboard queries" in docs/engines.rst.

logger = logging.getLogger(__name__)

#: The pseudo-state of :class:`JobFilter`: queued jobs whose ``run_at`` is still ahead.
#: A filter on ``"queued"`` means the others, runnable now.
SCHEDULED: t.Final = "scheduled"
#: Every value :attr:`JobFilter.state` accepts.
FILTER_STATES: t.Final = (
    "deferred",
    "queued",
    SCHEDULED,
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
#: The shortest search an index answers: a trigram needs three characters.
MIN_SEARCH: t.Final = 3
#: Seconds the per-minute series is kept (72 hours).
SERIES_KEEP: t.Final = 72 * 3600.0
#: Seconds after the end of a minute before it is rolled up: a completion committed
#: just after the minute ended carries a time inside it.
ROLLUP_LAG: t.Final = 5.0
#: Seconds without a heartbeat after which a worker is shown as stale.
WORKER_STALE_AFTER: t.Final = 15.0
#: Seconds without a heartbeat after which a worker is forgotten.
WORKER_FORGET_AFTER: t.Final = 3600.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs a dashboard list, count or bulk action is about; None matches all.

    Every filter given must match. ``search`` matches jobs whose task name or payload
    (the JSON arguments) contains it, case-insensitively; it needs :data:`MIN_SEARCH`
    characters (a shorter one is refused with ``ValueError``) because the store answers
    it with an index, never by reading every job.
    """

    state: str | None = None  #: one of :data:`FILTER_STATES`
    queue: str | None = None
    task: str | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in FILTER_STATES:
            raise ValueError(f"state={self.state!r}: use one of {', '.join(FILTER_STATES)}.")
        if self.search is not None and len(self.search) < MIN_SEARCH:
            raise ValueError(f"Search for at least {MIN_SEARCH} characters.")

    @property
    def is_finished(self) -> bool:
        """Whether it lists finished jobs only: those are ordered by ``finished_at``."""
        return self.state in ("succeeded", "failed", "cancelled")


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`ObservableStore.browse`."""

    records: list[JobRecord]
    #: give it back as ``cursor`` for the next page; None on the last one
    next_cursor: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    """What the dashboard's first page counts."""

    #: unexpired jobs per ``(queue, state)``, where state is a :data:`FILTER_STATES`
    #: value (``queued`` jobs not yet due count as ``scheduled``)
    counts: dict[tuple[str, str], int]
    #: per queue, the ``run_at`` of its longest-waiting runnable job
    oldest_runnable: dict[str, float]


@dataclasses.dataclass(frozen=True, slots=True)
class Minute:
    """Jobs of one queue that finished in one state during one minute."""

    minute: float  #: the Unix time the minute began (a multiple of 60)
    queue: str
    state: State
    count: int
    #: run time percentiles, in seconds (``finished_at - started_at``); None if no
    #: job of the minute had both times
    p50: float | None
    p95: float | None
    p99: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerBeat:
    """A worker thread's last heartbeat."""

    id: str  #: the worker id, as in a running job's ``worker``
    host: str
    pid: int
    thread: str
    queues: tuple[str, ...] | None  #: None: every queue
    job_id: str | None  #: the job it is running
    seen_at: float

    def is_stale(self, now: float, after: float = WORKER_STALE_AFTER) -> bool:
        """Whether it has been silent too long to be trusted alive."""
        return now - self.seen_at > after


@t.runtime_checkable
class ObservableStore(Store, t.Protocol):
    """A store the dashboard can show and act on (sqlite, memory).

    Lists are keyset-paginated: a page ends with a cursor, and the next page starts
    after it, so a page costs the same wherever it is and jobs enqueued meanwhile shift
    nothing. Lists of one finished state are ordered by ``finished_at``, newest first;
    every other list is newest enqueued first.
    """

    def overview(self, now: float) -> Overview:
        """Counts per queue and state (finished jobs past their TTL but not pruned
        yet may still count, for at most a prune interval), and the oldest runnable."""
        ...

    def browse(
        self, where: JobFilter, *, limit: int = 50, cursor: str | None = None, now: float
    ) -> Page:
        """Unexpired jobs matching ``where``, at most ``limit``, after ``cursor``."""
        ...

    def delete(self, job_id: str) -> bool:
        """Forget a job that is not running. False if it is unknown or running (cancel
        it first: its worker must not lose the job under its feet)."""
        ...

    def retry_matching(self, where: JobFilter, now: float) -> int:
        """:meth:`Store.retry` every failed or cancelled job matching; how many were."""
        ...

    def cancel_matching(self, where: JobFilter, now: float) -> int:
        """:meth:`Store.cancel` every unfinished job matching; how many were."""
        ...

    def delete_matching(self, where: JobFilter, now: float) -> int:
        """:meth:`delete` every job matching that is not running; how many were."""
        ...

    def heartbeat(self, beats: cabc.Sequence[WorkerBeat]) -> None:
        """Record these workers' heartbeats (replacing their previous ones)."""
        ...

    def workers(self) -> list[WorkerBeat]:
        """The last heartbeat of every worker not yet forgotten, by host, pid, thread."""
        ...

    def rollup(self, now: float) -> None:
        """Once a minute (more often is cheap, a no-op): roll the minutes that ended at
        least :data:`ROLLUP_LAG` seconds ago into the per-minute series, drop minutes
        older than :data:`SERIES_KEEP`, forget workers silent for
        :data:`WORKER_FORGET_AFTER`, and bring the search index up to date.

        Done by the worker group's supervisor (:func:`observe`), not per job, so that
        the series costs the job path nothing.
        """
        ...

    def series(self, since: float) -> list[Minute]:
        """The rolled-up minutes that began at or after ``since``, oldest first."""
        ...


if t.TYPE_CHECKING:
    from ..worker import WorkerGroup


def observe(group: WorkerGroup) -> None:
    """Heartbeats of ``group``'s workers and the per-minute rollup: the one call a
    worker group's supervisor makes for the dashboard, every tick (about a second).

    A store that is not an :class:`ObservableStore` is left alone; a failure is logged
    and the supervisor goes on (the dashboard must never stop jobs).
    """
    store = group.store
    if not isinstance(store, ObservableStore):
        return
    now = time.time()
    beats = []
    for worker in group.workers():
        host, pid, thread = _parse_worker_id(worker.id)
        attempt = worker.current
        beats.append(
            WorkerBeat(
                id=worker.id,
                host=host,
                pid=pid,
                thread=thread,
                queues=None if group.queues is None else tuple(group.queues),
                job_id=None if attempt is None else attempt.record.id,
                seen_at=now,
            )
        )
    try:
        store.heartbeat(beats)
        store.rollup(now)
    except Exception:
        logger.exception("Recording worker heartbeats failed; trying again next tick.")


def _parse_worker_id(worker_id: str) -> tuple[str, int, str]:
    """``host:pid:thread:random`` (``Worker.id``) apart; the host may hold colons."""
    parts = worker_id.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return worker_id, 0, ""
    return parts[0], int(parts[1]), parts[2]


def roll_up_minutes(
    finished: cabc.Iterable[tuple[str, str, float, float | None]],
) -> list[Minute]:
    """``(state, queue, finished_at, started_at)`` rows as per-minute counts and run
    time percentiles (nearest rank). Shared by the stores."""
    groups: dict[tuple[float, str, str], list[float | None]] = {}
    for state, queue, finished_at, started_at in finished:
        runtime = None if started_at is None else max(0.0, finished_at - started_at)
        groups.setdefault((finished_at // 60 * 60, queue, state), []).append(runtime)
    minutes = []
    for (minute, queue, state), runtimes in sorted(groups.items()):
        known = sorted(value for value in runtimes if value is not None)
        minutes.append(
            Minute(
                minute,
                queue,
                State(state),
                len(runtimes),
                _percentile(known, 0.50),
                _percentile(known, 0.95),
                _percentile(known, 0.99),
            )
        )
    return minutes


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
