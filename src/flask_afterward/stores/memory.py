"""An in-process store (``memory://``) for tests and eager mode.

It keeps the same contract as the sqlite store (the contract suite proves it), but
nothing survives the process, and claims scan every job: it is not for production.
"""

from __future__ import annotations

import builtins
import collections
import collections.abc as cabc
import threading
import time
import typing as t

from ..errors import StoreError
from ..records import ACTIVE
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
from .base import roll_up_minutes
from .base import ROLLUP_LAG
from .base import SCHEDULED
from .base import SERIES_KEEP
from .base import Stats
from .base import WORKER_FORGET_AFTER
from .base import WorkerBeat


class MemoryStore:
    """Jobs in a dict, guarded by one lock.

    :param defer_grace: seconds after which a deferred job is released anyway.
    """

    capabilities: t.ClassVar = ALL_CAPABILITIES
    is_shared_across_machines: t.ClassVar = False

    def __init__(self, *, defer_grace: float = 60.0) -> None:
        self.defer_grace = defer_grace
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}

    def enqueue(self, record: JobRecord) -> JobRecord:
        with self._lock:
            holder = self._active_holder(record.unique_key)
            if holder is not None:
                return holder
            if record.id in self._jobs:
                raise StoreError(
                    f"A job with the id {record.id!r} is stored already. Enqueue a record "
                    "once; every new job gets a new id (flask_afterward.records.new_job_id)."
                )
            if record.state in TERMINAL and record.secrets is not None:
                record = record.replace(secrets=None)
            self._jobs[record.id] = record
            return record

    def _active_holder(self, unique_key: str | None) -> JobRecord | None:
        if unique_key is not None:
            for other in self._jobs.values():
                if other.unique_key == unique_key and other.state in ACTIVE:
                    return other
        return None

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._jobs.get(job_id)
        if record is None or _is_expired(record, time.time()):
            return None
        return record

    def list(
        self,
        *,
        state: State | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[JobRecord]:
        now = time.time()
        with self._lock:
            # Newest first is reversed insertion order: dicts keep it, and replacing a
            # record keeps its place (as an UPDATE keeps sqlite's rowid).
            records = [
                record
                for record in reversed(self._jobs.values())
                if (state is None or record.state == state)
                and (queue is None or record.queue == queue)
                and (task is None or record.task == task)
                and not _is_expired(record, now)
            ]
        return records[offset : offset + limit]

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.state in TERMINAL:
                return False
            if record.state == State.RUNNING:
                self._jobs[job_id] = record.replace(is_cancel_requested=True)
            else:
                self._jobs[job_id] = record.replace(
                    state=State.CANCELLED, finished_at=time.time(), secrets=None
                )
            return True

    def release_deferred(self, job_ids: cabc.Iterable[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                record = self._jobs.get(job_id)
                if record is not None and record.state == State.DEFERRED:
                    self._jobs[job_id] = record.replace(state=State.QUEUED)

    def retry(self, job_id: str) -> bool:
        with self._lock:
            now = time.time()
            record = self._jobs.get(job_id)
            if (
                record is None
                or record.state not in (State.FAILED, State.CANCELLED)
                or _is_expired(record, now)
                or self._active_holder(record.unique_key) is not None
            ):
                return False
            self._jobs[job_id] = record.replace(
                state=State.QUEUED,
                run_at=now,
                attempts=0,
                started_at=None,
                finished_at=None,
                worker=None,
                lease_until=None,
                progress=None,
                message=None,
                result=None,
                error=None,
                is_cancel_requested=False,
            )
            return True

    def prune(self, now: float) -> int:
        with self._lock:
            expired = [job_id for job_id, r in self._jobs.items() if _is_expired(r, now)]
            for job_id in expired:
                del self._jobs[job_id]
        return len(expired)

    def stats(self, since: float) -> Stats:
        counts: collections.Counter[tuple[str, State]] = collections.Counter()
        finished: collections.Counter[State] = collections.Counter()
        now = time.time()
        with self._lock:
            for record in self._jobs.values():
                if _is_expired(record, now):
                    continue
                counts[record.queue, record.state] += 1
                if record.finished_at is not None and record.finished_at >= since:
                    finished[record.state] += 1
        return Stats(dict(counts), dict(finished))

    def close(self) -> None:
        pass

    # Attempts

    def start(self, job_id: str, worker: str, lease: float) -> JobRecord | None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.state != State.QUEUED:
                return None
            return self._start(record, worker, lease, time.time())

    def _start(self, record: JobRecord, worker: str, lease: float, now: float) -> JobRecord:
        """``record`` → running under ``worker``. Call with the lock held."""
        started = record.replace(
            state=State.RUNNING,
            worker=worker,
            lease_until=now + lease,
            attempts=record.attempts + 1,
            started_at=now,
        )
        self._jobs[started.id] = started
        return started

    # QueueStore

    def _claim(
        self,
        worker: str,
        queues: cabc.Sequence[str] | None,
        lease: float,
        *,
        is_fresh_only: bool,
    ) -> JobRecord | None:
        """Claim the best runnable job; with ``is_fresh_only``, one never claimed before."""
        now = time.time()
        with self._lock:
            self._recover(now)
            best: JobRecord | None = None
            for record in self._jobs.values():
                if (
                    record.state == State.QUEUED
                    and record.run_at <= now
                    and (queues is None or record.queue in queues)
                    and not (is_fresh_only and record.attempts)
                    and (best is None or claim_order(record) < claim_order(best))
                ):
                    best = record
            if best is None:
                return None
            return self._start(best, worker, lease, now)

    def recover(self, now: float) -> None:
        with self._lock:
            self._recover(now)

    def _recover(self, now: float) -> None:
        for job_id, record in list(self._jobs.items()):
            if record.state == State.DEFERRED and record.run_at + self.defer_grace <= now:
                self._jobs[job_id] = record.replace(state=State.QUEUED)
            elif (
                record.state == State.RUNNING
                and record.lease_until is not None
                and record.lease_until <= now
            ):
                if record.attempts < record.max_retries + 1 + LOST_WORKER_ATTEMPTS:
                    self._jobs[job_id] = record.replace(
                        state=State.QUEUED, worker=None, lease_until=None, run_at=now
                    )
                else:
                    self._jobs[job_id] = record.replace(
                        state=State.FAILED,
                        secrets=None,
                        worker=None,
                        lease_until=None,
                        finished_at=now,
                        error=LOST_ERROR,
                    )

    def _held(self, job_id: str, holder: str) -> JobRecord | None:
        """The job if it is running under ``holder``'s lease. Call with the lock held."""
        record = self._jobs.get(job_id)
        if record is None or record.state != State.RUNNING or record.worker != holder:
            return None
        return record

    def _update_own(self, job_id: str, holder: str, **changes: object) -> bool:
        with self._lock:
            record = self._held(job_id, holder)
            if record is None:
                return False
            self._jobs[job_id] = record.replace(**changes)
            return True

    def extend_lease(self, job_id: str, worker: str, lease: float) -> bool:
        return self._update_own(job_id, worker, lease_until=time.time() + lease)

    def complete(self, job_id: str, worker: str, result: str | None) -> bool:
        return self._update_own(
            job_id,
            worker,
            state=State.SUCCEEDED,
            secrets=None,
            result=result,
            progress=1.0,
            finished_at=time.time(),
            worker=None,
            lease_until=None,
        )

    def complete_and_claim_many(
        self,
        done: cabc.Sequence[tuple[str, str | None]],
        worker: str,
        queues: cabc.Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> Batch:
        completed = [self.complete(job_id, worker, result) for job_id, result in done]
        first = self._claim(worker, queues, lease, is_fresh_only=False) if limit > 0 else None
        if first is None:
            return completed, []
        claimed = [first]
        # A job claimed before goes alone; the rest of a batch is fresh (see sqlite.sql).
        while (
            first.attempts == 1
            and len(claimed) < limit
            and (record := self._claim(worker, queues, lease, is_fresh_only=True)) is not None
        ):
            claimed.append(record)
        return completed, claimed

    def fail(self, job_id: str, worker: str, error: str, retry_at: float | None) -> bool:
        if retry_at is None:
            changes: dict[str, object] = {
                "state": State.FAILED,
                "finished_at": time.time(),
                "secrets": None,
            }
        else:
            changes = {"state": State.QUEUED, "run_at": retry_at}
        return self._update_own(
            job_id, worker, error=error, worker=None, lease_until=None, **changes
        )

    def requeue(self, job_id: str, worker: str) -> bool:
        with self._lock:
            record = self._held(job_id, worker)
            if record is None:
                return False
            self._jobs[job_id] = record.replace(
                state=State.QUEUED,
                worker=None,
                lease_until=None,
                attempts=record.attempts - 1,
                run_at=time.time(),
            )
            return True

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        return self._update_own(
            job_id,
            worker,
            state=State.CANCELLED,
            secrets=None,
            finished_at=time.time(),
            worker=None,
            lease_until=None,
        )

    def set_progress(self, job_id: str, worker: str, value: float, message: str | None) -> bool:
        with self._lock:
            record = self._held(job_id, worker)
            if record is None:
                return False
            self._jobs[job_id] = record.replace(progress=value, message=message)
            return record.is_cancel_requested

    # Dashboard (ObservableStore; see "Dashboard queries" in docs/engines.rst)

    def _observed(self) -> _Observed:
        """The dashboard's side tables, made on first use."""
        observed: _Observed | None = getattr(self, "_dashboard", None)
        if observed is None:
            observed = self._dashboard = _Observed()
        return observed

    def _numbered(self) -> dict[str, int]:
        """Each job's place in enqueue order (sqlite's rowid), numbered lazily: new
        jobs come last in the dict, so they get the next numbers. Call under the lock."""
        order = self._observed().order
        for job_id in self._jobs:
            if job_id not in order:
                order[job_id] = self._observed().next_number
                self._observed().next_number += 1
        return order

    def overview(self, now: float) -> Overview:
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        oldest: dict[str, float] = {}
        with self._lock:
            for record in self._jobs.values():
                if _is_expired(record, now):
                    continue
                counts[record.queue, _shown_state(record, now)] += 1
                if record.state == State.QUEUED and record.run_at <= now:
                    oldest[record.queue] = min(oldest.get(record.queue, now), record.run_at)
        return Overview(dict(counts), oldest)

    def _matching(
        self, where: JobFilter, now: float
    ) -> builtins.list[tuple[tuple[float, int], JobRecord]]:
        """``(sort key, record)`` of the jobs matching, best first."""
        needle = None if where.search is None else where.search.lower()
        with self._lock:
            order = self._numbered()
            found = [
                (
                    (record.finished_at or 0.0 if where.is_finished else 0.0, order[record.id]),
                    record,
                )
                for record in self._jobs.values()
                if not _is_expired(record, now)
                and (where.state is None or _shown_state(record, now) == where.state)
                and (where.queue is None or record.queue == where.queue)
                and (where.task is None or record.task == where.task)
                and (
                    needle is None
                    or needle in record.task.lower()
                    or needle in record.payload.lower()
                )
            ]
        found.sort(key=lambda item: item[0], reverse=True)
        return found

    def browse(
        self, where: JobFilter, *, limit: int = 50, cursor: str | None = None, now: float
    ) -> Page:
        found = self._matching(where, now)
        if cursor is not None:
            key, _, number = cursor.partition(":")
            after = (float(key), int(number))
            found = [item for item in found if item[0] < after]
        records = [record for _, record in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            last_key, last_number = found[limit - 1][0]
            next_cursor = f"{last_key!r}:{last_number}"
        return Page(records, next_cursor)

    def delete(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.state == State.RUNNING:
                return False
            del self._jobs[job_id]
            return True

    def retry_matching(self, where: JobFilter, now: float) -> int:
        return sum(self.retry(record.id) for _, record in self._matching(where, now))

    def cancel_matching(self, where: JobFilter, now: float) -> int:
        return sum(self.cancel(record.id) for _, record in self._matching(where, now))

    def delete_matching(self, where: JobFilter, now: float) -> int:
        return sum(self.delete(record.id) for _, record in self._matching(where, now))

    def heartbeat(self, beats: cabc.Sequence[WorkerBeat]) -> None:
        with self._lock:
            for beat in beats:
                self._observed().workers[beat.id] = beat

    def workers(self) -> builtins.list[WorkerBeat]:
        with self._lock:
            beats = list(self._observed().workers.values())
        return sorted(beats, key=lambda beat: (beat.host, beat.pid, beat.thread))

    def rollup(self, now: float) -> None:
        observed = self._observed()
        if now < observed.next_rollup:
            return
        observed.next_rollup = (now // 60 + 1) * 60 + ROLLUP_LAG
        start = max(observed.rolled_to, (now - SERIES_KEEP) // 60 * 60)
        end = (now - ROLLUP_LAG) // 60 * 60
        with self._lock:
            finished = [
                (str(r.state), r.queue, r.finished_at, r.started_at)
                for r in self._jobs.values()
                if r.state in TERMINAL
                and r.finished_at is not None
                and start <= r.finished_at < end
            ]
            if end > start:
                for minute in roll_up_minutes(finished):
                    observed.minutes[minute.minute, minute.queue, minute.state] = minute
                observed.rolled_to = end
            for key in [key for key in observed.minutes if key[0] < now - SERIES_KEEP]:
                del observed.minutes[key]
            for beat in [
                b for b in observed.workers.values() if b.seen_at < now - WORKER_FORGET_AFTER
            ]:
                del observed.workers[beat.id]
            for job_id in [job_id for job_id in observed.order if job_id not in self._jobs]:
                del observed.order[job_id]

    def series(self, since: float) -> builtins.list[Minute]:
        with self._lock:
            minutes = [m for m in self._observed().minutes.values() if m.minute >= since]
        return sorted(minutes, key=lambda m: (m.minute, m.queue, m.state))


class _Observed:
    """What the memory store keeps for the dashboard besides its jobs."""

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.next_number = 1
        self.workers: dict[str, WorkerBeat] = {}
        self.minutes: dict[tuple[float, str, State], Minute] = {}
        self.rolled_to = 0.0
        self.next_rollup = 0.0


def _shown_state(record: JobRecord, now: float) -> str:
    """The dashboard's state: a queued job not yet due is ``scheduled``."""
    if record.state == State.QUEUED and record.run_at > now:
        return SCHEDULED
    return str(record.state)


def _is_expired(record: JobRecord, now: float) -> bool:
    expires_at = record.expires_at
    return expires_at is not None and expires_at <= now
