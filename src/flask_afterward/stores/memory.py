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
from .base import LOST_ERROR
from .base import LOST_WORKER_ATTEMPTS
from .base import Stats


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


def _is_expired(record: JobRecord, now: float) -> bool:
    expires_at = record.expires_at
    return expires_at is not None and expires_at <= now
