"""The store contract: one behavioural suite, run against every store.

The docstrings of :mod:`flask_afterward.stores.base` are the contract; each test here
pins one sentence of it. A store is done when it passes this suite, not when it has
tests of its own.

Two fixtures, so that stores which only implement :class:`Store` (Celery, RQ: their
engines run the jobs) can join the first part without the second:

- ``store`` runs over :data:`STORES` and uses only ``Store`` methods;
- ``queue_store`` runs over :data:`QUEUE_STORES` and adds the ``QueueStore`` methods,
  which is also how a test drives a job into the running or finished states for real.

No test sleeps. Time-dependent rules are reached with times in the past or future
(``run_at``, ``finished_at`` and ``prune(now)``), a lease of 0 seconds (expired as soon
as it is taken), and an explicit ``recover(now)`` instead of waiting for a claim to run
the recovery pass on its own.
"""

from __future__ import annotations

import collections.abc as cabc
import pathlib
import threading
import time
import typing as t

import pytest

from flask_afterward.errors import StoreError
from flask_afterward.records import ALL_CAPABILITIES
from flask_afterward.records import claim_order
from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.records import State
from flask_afterward.stores.base import LOST_ERROR
from flask_afterward.stores.base import LOST_WORKER_ATTEMPTS
from flask_afterward.stores.base import QueueStore
from flask_afterward.stores.base import Store
from flask_afterward.stores.memory import MemoryStore
from flask_afterward.stores.sqlite import SqliteStore
from tests import redis_server
from tests.tier2 import claim

#: The defer grace every store under test is opened with.
DEFER_GRACE = 60.0
#: A lease that holds for the whole of any test.
LEASE = 300.0


def _memory(tmp_path: pathlib.Path) -> MemoryStore:
    return MemoryStore(defer_grace=DEFER_GRACE)


def _sqlite(tmp_path: pathlib.Path) -> SqliteStore:
    return SqliteStore(str(tmp_path / "jobs.sqlite3"), defer_grace=DEFER_GRACE)


def _redis(tmp_path: pathlib.Path) -> QueueStore:
    # Imported here: only a run with redis-server (and so redis-py) gets this far.
    from flask_afterward.stores.redis import RedisStore

    redis_server.server()
    return RedisStore(
        redis_server.URL, prefix=redis_server.unique_prefix(), defer_grace=DEFER_GRACE
    )


#: Every store, by name: the ``Store`` part of the contract runs against these.
#: A Celery or RQ store joins here, and only here.
STORES: dict[str, cabc.Callable[[pathlib.Path], Store]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}
#: Stores our own worker pulls from: the ``QueueStore`` part runs against these.
QUEUE_STORES: dict[str, cabc.Callable[[pathlib.Path], QueueStore]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}
if redis_server.AVAILABLE:  # else left out locally; under CI its absence is an error
    STORES["redis"] = QUEUE_STORES["redis"] = _redis
#: Stores shared by processes on several machines (``is_shared_across_machines``).
ACROSS_MACHINES: t.Final = frozenset({"redis"})
#: Marks for the cases of a store, so ``-m "not redis"`` leaves out the Redis ones.
MARKS: t.Final = {"redis": [pytest.mark.redis]}


def _params(names: cabc.Iterable[str]) -> list[t.Any]:
    return [pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(names)]


@pytest.fixture(params=_params(STORES))
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> cabc.Iterator[Store]:
    opened = STORES[request.param](tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=_params(QUEUE_STORES))
def queue_store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> cabc.Iterator[QueueStore]:
    opened = QUEUE_STORES[request.param](tmp_path)
    yield opened
    opened.close()


def make(**fields: t.Any) -> JobRecord:
    """A new queued job, runnable since a second ago, with ``fields`` changed."""
    now = time.time()
    values: dict[str, t.Any] = {
        "id": new_job_id(),
        "task": "tests.add",
        "payload": '{"args": [1, 2], "kwargs": {}}',
        "state": State.QUEUED,
        "created_at": now,
        "run_at": now - 1,
    }
    values.update(fields)
    return JobRecord(**values)


def state_of(store: Store, job_id: str) -> State:
    record = store.get(job_id)
    assert record is not None, f"job {job_id} is gone"
    return record.state


def running(
    store: QueueStore, worker: str = "w1", lease: float = LEASE, **fields: t.Any
) -> JobRecord:
    """Enqueue a job and claim it as ``worker``; the store must hold no other job."""
    record = store.enqueue(make(**fields))
    claimed = claim(store, worker, None, lease)
    assert claimed is not None and claimed.id == record.id
    return claimed


def lose_lease(store: QueueStore, worker: str) -> JobRecord:
    """Claim the only runnable job with a lease that is over at once, and recover it."""
    claimed = claim(store, worker, None, 0.0)
    assert claimed is not None
    store.recover(time.time())
    return claimed


# -- Store: enqueue and get ---------------------------------------------------------


def test_stores_implement_their_protocols(tmp_path: pathlib.Path) -> None:
    for name, factory in STORES.items():
        opened = factory(tmp_path / name)
        try:
            assert isinstance(opened, Store), name
        finally:
            opened.close()
    for name, factory in QUEUE_STORES.items():
        opened = factory(tmp_path / f"queue-{name}")
        try:
            assert isinstance(opened, QueueStore), name
        finally:
            opened.close()


def test_enqueue_then_get_returns_every_field(store: Store) -> None:
    now = time.time()
    # Every field differs from its default, so a dropped or swapped column shows.
    record = JobRecord(
        id=new_job_id(),
        task="tests.every_field",
        payload='{"args": ["ü", 1.5], "kwargs": {"x": null}}',
        state=State.RUNNING,
        queue="mail",
        priority=-3,
        attempts=2,
        max_retries=4,
        retry_backoff=2.5,
        timeout=12.25,
        result_ttl=3600.0,
        unique_key="mail:a@b",
        created_at=now - 30,
        run_at=now - 20,
        started_at=now - 10,
        finished_at=now - 5,
        worker="host:1:w:abcd",
        lease_until=now + 25,
        progress=0.75,
        message="almost",
        result='{"ok": true}',
        error="builtins.ValueError: no\nTraceback ...",
        is_cancel_requested=True,
        secrets='{"Cookie": "session=abc"}',
    )

    stored = store.enqueue(record)

    assert stored == record
    assert store.get(record.id) == record


def test_get_of_an_unknown_id_returns_none(store: Store) -> None:
    store.enqueue(make())

    assert store.get(new_job_id()) is None


@pytest.mark.parametrize("state", [State.DEFERRED, State.QUEUED])
def test_unique_key_held_by_a_waiting_job_returns_that_job(store: Store, state: State) -> None:
    first = store.enqueue(make(state=state, unique_key="report:1"))

    second = store.enqueue(make(unique_key="report:1", task="tests.other"))

    assert second == first
    assert store.get(second.id) == first
    assert [r.id for r in store.list()] == [first.id]


def test_unique_key_held_by_a_running_job_returns_that_job(queue_store: QueueStore) -> None:
    claimed = running(queue_store, unique_key="report:1")

    again = queue_store.enqueue(make(unique_key="report:1"))

    assert again.id == claimed.id
    assert again.state == State.RUNNING
    assert len(queue_store.list()) == 1


def test_different_unique_keys_do_not_collide(store: Store) -> None:
    first = store.enqueue(make(unique_key="a"))
    second = store.enqueue(make(unique_key="b"))
    third = store.enqueue(make())
    fourth = store.enqueue(make())

    assert len({first.id, second.id, third.id, fourth.id}) == 4
    assert len(store.list()) == 4


def test_unique_key_is_free_again_once_the_job_succeeded(queue_store: QueueStore) -> None:
    claimed = running(queue_store, unique_key="report:1")
    assert queue_store.complete(claimed.id, "w1", "1")

    fresh = make(unique_key="report:1")
    stored = queue_store.enqueue(fresh)

    assert stored.id == fresh.id
    assert state_of(queue_store, fresh.id) == State.QUEUED


def test_unique_key_is_free_again_once_the_job_was_cancelled(store: Store) -> None:
    first = store.enqueue(make(unique_key="report:1"))
    assert store.cancel(first.id)

    fresh = make(unique_key="report:1")

    assert store.enqueue(fresh).id == fresh.id


def test_enqueue_stores_a_finished_job_as_given_less_its_secrets(store: Store) -> None:
    # Eager mode runs the job first and stores the finished record.
    done = make(
        state=State.SUCCEEDED,
        attempts=1,
        result="3",
        finished_at=time.time(),
        secrets='{"Cookie": "session=abc"}',
    )

    stored = store.enqueue(done)

    assert stored == done.replace(secrets=None)
    assert store.get(done.id) == stored


def test_unique_key_held_by_an_active_job_refuses_a_finished_record_too(store: Store) -> None:
    holder = store.enqueue(make(unique_key="report:1"))

    again = store.enqueue(
        make(state=State.SUCCEEDED, finished_at=time.time(), unique_key="report:1")
    )

    assert again == holder
    assert store.list() == [holder]


# -- Store: list ---------------------------------------------------------------------


def test_list_returns_newest_first(store: Store) -> None:
    ids = [store.enqueue(make()).id for _ in range(5)]

    assert [r.id for r in store.list()] == ids[::-1]


def test_list_pages_with_limit_and_offset(store: Store) -> None:
    ids = [store.enqueue(make()).id for _ in range(7)][::-1]

    assert [r.id for r in store.list(limit=3)] == ids[:3]
    assert [r.id for r in store.list(limit=3, offset=3)] == ids[3:6]
    assert [r.id for r in store.list(limit=3, offset=6)] == ids[6:]
    assert store.list(offset=7) == []


def test_list_limit_defaults_to_50(store: Store) -> None:
    for _ in range(55):
        store.enqueue(make())

    assert len(store.list()) == 50


def test_list_filters_by_state_queue_and_task_together(store: Store) -> None:
    wanted = store.enqueue(make(queue="mail", task="tests.send"))
    store.enqueue(make(queue="mail", task="tests.other"))
    store.enqueue(make(queue="default", task="tests.send"))
    deferred = store.enqueue(make(state=State.DEFERRED, queue="mail", task="tests.send"))

    assert store.list(state=State.QUEUED, queue="mail", task="tests.send") == [wanted]
    assert store.list(state=State.DEFERRED) == [deferred]
    assert {r.id for r in store.list(queue="mail")} == {
        wanted.id,
        deferred.id,
        store.list(task="tests.other")[0].id,
    }
    assert len(store.list(task="tests.send")) == 3
    assert store.list(queue="nowhere") == []
    assert store.list(state=State.RUNNING) == []


# -- Store: cancel -------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.DEFERRED, State.QUEUED])
def test_cancel_of_a_waiting_job_cancels_it_at_once(store: Store, state: State) -> None:
    record = store.enqueue(make(state=state))
    before = time.time()

    assert store.cancel(record.id) is True

    cancelled = store.get(record.id)
    assert cancelled is not None
    assert cancelled.state == State.CANCELLED
    assert cancelled.finished_at is not None and cancelled.finished_at >= before


def test_cancelled_job_is_never_claimed(queue_store: QueueStore) -> None:
    record = queue_store.enqueue(make())
    queue_store.cancel(record.id)

    assert claim(queue_store, "w1", None, LEASE) is None


def test_cancel_of_a_running_job_only_requests_it(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    assert queue_store.cancel(claimed.id) is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.RUNNING
    assert record.is_cancel_requested is True
    assert record.worker == "w1"


def test_requested_cancel_reaches_the_worker_at_its_next_progress(
    queue_store: QueueStore,
) -> None:
    claimed = running(queue_store)
    assert queue_store.set_progress(claimed.id, "w1", 0.1, None) is False

    queue_store.cancel(claimed.id)

    assert queue_store.set_progress(claimed.id, "w1", 0.2, "still going") is True
    assert queue_store.mark_cancelled(claimed.id, "w1") is True
    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.CANCELLED
    assert record.finished_at is not None
    assert record.worker is None


@pytest.mark.parametrize("state", [State.SUCCEEDED, State.FAILED, State.CANCELLED])
def test_cancel_of_a_finished_job_returns_false(store: Store, state: State) -> None:
    record = store.enqueue(make(state=state, finished_at=time.time(), result="1"))

    assert store.cancel(record.id) is False

    assert store.get(record.id) == record


def test_cancel_of_a_job_that_finished_for_real_returns_false(queue_store: QueueStore) -> None:
    claimed = running(queue_store)
    queue_store.complete(claimed.id, "w1", "1")

    assert queue_store.cancel(claimed.id) is False
    assert state_of(queue_store, claimed.id) == State.SUCCEEDED


def test_cancel_of_an_unknown_job_returns_false(store: Store) -> None:
    assert store.cancel(new_job_id()) is False


def test_second_cancel_of_a_waiting_job_returns_false(store: Store) -> None:
    record = store.enqueue(make())
    store.cancel(record.id)

    assert store.cancel(record.id) is False


# -- Store: release_deferred ---------------------------------------------------------


def test_release_deferred_makes_deferred_jobs_queued(store: Store) -> None:
    first = store.enqueue(make(state=State.DEFERRED))
    second = store.enqueue(make(state=State.DEFERRED))
    other = store.enqueue(make(state=State.DEFERRED))

    # Any iterable; unknown ids are ignored.
    store.release_deferred(job_id for job_id in [first.id, second.id, new_job_id()])

    assert state_of(store, first.id) == State.QUEUED
    assert state_of(store, second.id) == State.QUEUED
    assert state_of(store, other.id) == State.DEFERRED


def test_released_job_becomes_claimable(queue_store: QueueStore) -> None:
    record = queue_store.enqueue(make(state=State.DEFERRED))
    assert claim(queue_store, "w1", None, LEASE) is None

    queue_store.release_deferred([record.id])

    claimed = claim(queue_store, "w1", None, LEASE)
    assert claimed is not None and claimed.id == record.id


@pytest.mark.parametrize("state", [State.QUEUED, State.SUCCEEDED, State.FAILED, State.CANCELLED])
def test_release_deferred_leaves_other_states_alone(store: Store, state: State) -> None:
    finished_at = None if state == State.QUEUED else time.time()
    record = store.enqueue(make(state=state, finished_at=finished_at))

    store.release_deferred([record.id])

    assert store.get(record.id) == record


def test_release_deferred_leaves_a_running_job_alone(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    queue_store.release_deferred([claimed.id])

    assert queue_store.get(claimed.id) == claimed


def test_release_deferred_leaves_a_cancelled_deferred_job_cancelled(store: Store) -> None:
    # The request was cancelled before its response went out: it must not run.
    record = store.enqueue(make(state=State.DEFERRED))
    store.cancel(record.id)

    store.release_deferred([record.id])

    assert state_of(store, record.id) == State.CANCELLED


# -- Store: retry --------------------------------------------------------------------


def test_retry_of_a_failed_job_queues_it_as_new(queue_store: QueueStore) -> None:
    claimed = running(queue_store, max_retries=0)
    queue_store.set_progress(claimed.id, "w1", 0.5, "half")
    assert queue_store.fail(claimed.id, "w1", "builtins.ValueError: no", None)
    before = time.time()

    assert queue_store.retry(claimed.id) is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.QUEUED
    assert record.attempts == 0
    assert record.error is None and record.result is None
    assert record.started_at is None and record.finished_at is None
    assert record.worker is None and record.lease_until is None
    assert record.progress is None and record.message is None
    assert record.is_cancel_requested is False
    assert before <= record.run_at <= time.time()
    # What the job is stays as it was.
    assert (record.task, record.payload, record.max_retries) == (
        claimed.task,
        claimed.payload,
        claimed.max_retries,
    )
    again = claim(queue_store, "w2", None, LEASE)
    assert again is not None and again.id == claimed.id and again.attempts == 1


def test_retry_of_a_job_cancelled_while_running_clears_the_request(
    queue_store: QueueStore,
) -> None:
    claimed = running(queue_store)
    queue_store.cancel(claimed.id)
    queue_store.mark_cancelled(claimed.id, "w1")

    assert queue_store.retry(claimed.id) is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.QUEUED
    assert record.is_cancel_requested is False
    assert record.attempts == 0


def test_retry_of_a_cancelled_waiting_job_queues_it(store: Store) -> None:
    record = store.enqueue(make())
    store.cancel(record.id)

    assert store.retry(record.id) is True

    retried = store.get(record.id)
    assert retried is not None
    assert retried.state == State.QUEUED
    assert retried.finished_at is None


@pytest.mark.parametrize("state", [State.DEFERRED, State.QUEUED, State.SUCCEEDED])
def test_retry_refuses_jobs_that_are_not_failed_or_cancelled(store: Store, state: State) -> None:
    finished_at = time.time() if state == State.SUCCEEDED else None
    record = store.enqueue(make(state=state, finished_at=finished_at, result="1"))

    assert store.retry(record.id) is False

    assert store.get(record.id) == record


def test_retry_refuses_a_running_job(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    assert queue_store.retry(claimed.id) is False

    assert queue_store.get(claimed.id) == claimed


def test_retry_of_an_unknown_job_returns_false(store: Store) -> None:
    assert store.retry(new_job_id()) is False


def test_retry_of_an_expired_job_returns_false(store: Store) -> None:
    record = store.enqueue(
        make(state=State.FAILED, finished_at=time.time() - 20, result_ttl=10.0, error="x")
    )

    assert store.retry(record.id) is False

    assert store.get(record.id) is None
    assert store.list() == []


def test_retry_refuses_while_an_active_job_holds_the_unique_key(store: Store) -> None:
    failed = store.enqueue(
        make(state=State.FAILED, finished_at=time.time(), unique_key="k", error="x")
    )
    holder = store.enqueue(make(unique_key="k"))

    assert store.retry(failed.id) is False

    assert state_of(store, failed.id) == State.FAILED
    store.cancel(holder.id)
    assert store.retry(failed.id) is True
    assert state_of(store, failed.id) == State.QUEUED


# -- Store: expiry and prune ---------------------------------------------------------


def test_expired_jobs_are_hidden_before_any_prune(queue_store: QueueStore) -> None:
    # A result TTL of 0: forgotten the moment it finishes.
    claimed = running(queue_store, result_ttl=0.0)
    kept = queue_store.enqueue(make())

    assert queue_store.complete(claimed.id, "w1", "1")

    assert queue_store.get(claimed.id) is None
    assert queue_store.list() == [kept]
    assert queue_store.list(state=State.SUCCEEDED) == []


def test_prune_deletes_exactly_the_expired_jobs(store: Store) -> None:
    now = time.time()
    # Given finished jobs expiring at now - 5, now + 100 and now + 1000,
    expired = store.enqueue(make(state=State.SUCCEEDED, finished_at=now - 15, result_ttl=10))
    soon = store.enqueue(make(state=State.FAILED, finished_at=now, result_ttl=100, error="x"))
    later = store.enqueue(make(state=State.CANCELLED, finished_at=now, result_ttl=1000))
    # and active jobs, which never expire,
    waiting = store.enqueue(make(run_at=now - 10_000, created_at=now - 10_000))
    deferred = store.enqueue(make(state=State.DEFERRED, created_at=now - 10_000))

    # when pruning as of now, then as of now + 500,
    assert store.prune(now) == 1
    assert store.prune(now) == 0
    assert store.prune(now + 500) == 1

    # then only the job expiring after that is left, with the active ones.
    assert store.get(expired.id) is None
    assert store.get(soon.id) is None
    assert {r.id for r in store.list()} == {later.id, waiting.id, deferred.id}


def test_prune_boundary_is_inclusive(store: Store) -> None:
    finished_at = time.time()
    record = store.enqueue(make(state=State.SUCCEEDED, finished_at=finished_at, result_ttl=50))

    assert store.prune(finished_at + 49) == 0
    assert store.prune(finished_at + 50) == 1
    assert store.get(record.id) is None


def test_prune_of_a_job_finished_for_real(queue_store: QueueStore) -> None:
    claimed = running(queue_store, result_ttl=60.0)
    queue_store.complete(claimed.id, "w1", "1")

    assert queue_store.prune(time.time()) == 0
    assert queue_store.prune(time.time() + 61) == 1
    assert queue_store.get(claimed.id) is None


# -- Store: stats --------------------------------------------------------------------


def test_stats_counts_unexpired_jobs_per_queue_and_state(store: Store) -> None:
    now = time.time()
    store.enqueue(make())
    store.enqueue(make())
    store.enqueue(make(queue="mail"))
    store.enqueue(make(state=State.DEFERRED, queue="mail"))
    store.enqueue(make(state=State.SUCCEEDED, finished_at=now - 100, result_ttl=1000))
    store.enqueue(make(state=State.FAILED, finished_at=now - 5, error="x", queue="mail"))
    store.enqueue(make(state=State.FAILED, finished_at=now - 100, result_ttl=10))  # expired

    stats = store.stats(since=now - 50)

    assert stats.counts == {
        ("default", State.QUEUED): 2,
        ("mail", State.QUEUED): 1,
        ("mail", State.DEFERRED): 1,
        ("default", State.SUCCEEDED): 1,
        ("mail", State.FAILED): 1,
    }
    assert stats.finished == {State.FAILED: 1}
    assert store.stats(since=now - 1000).finished == {State.SUCCEEDED: 1, State.FAILED: 1}


def test_stats_of_an_empty_store_are_empty(store: Store) -> None:
    stats = store.stats(since=0.0)

    assert stats.counts == {}
    assert stats.finished == {}


# -- QueueStore: claim ---------------------------------------------------------------


def test_claim_takes_the_highest_priority_then_the_oldest_run_at(
    queue_store: QueueStore,
) -> None:
    now = time.time()
    low_old = queue_store.enqueue(make(priority=0, run_at=now - 100))
    high_new = queue_store.enqueue(make(priority=5, run_at=now - 1))
    high_old = queue_store.enqueue(make(priority=5, run_at=now - 50))
    low_new = queue_store.enqueue(make(priority=0, run_at=now - 2))
    negative = queue_store.enqueue(make(priority=-1, run_at=now - 1000))

    order = [claim(queue_store, "w1", None, LEASE) for _ in range(5)]

    assert [r.id if r else None for r in order] == [
        high_old.id,
        high_new.id,
        low_old.id,
        low_new.id,
        negative.id,
    ]
    assert claim(queue_store, "w1", None, LEASE) is None


@pytest.mark.parametrize("queues", [None, ["a", "b"]], ids=["any queue", "from queues"])
@pytest.mark.parametrize("limit", [1, 3, 50])
def test_claims_follow_claim_order_on_mixed_priorities_and_run_at(
    queue_store: QueueStore, queues: list[str] | None, limit: int
) -> None:
    # Given jobs of mixed priorities (negative ones too) and distinct run_at, over two
    # queues, enqueued in an order that is neither of the two sort keys
    now = time.time()
    enqueued = [
        queue_store.enqueue(
            make(queue="ab"[n % 2], priority=(n * 7) % 5 - 2, run_at=now - 100 + (n * 13) % 40)
        )
        for n in range(40)
    ]

    # When a worker claims them all, in batches of up to ``limit``
    claimed: list[JobRecord] = []
    while batch := queue_store.complete_and_claim_many([], "w1", queues, LEASE, limit)[1]:
        assert len(batch) <= limit
        claimed.extend(batch)

    # Then they come best first, as records.claim_order sorts them (the one definition
    # of the order: the sqlite store's SQL must agree with it)
    assert [r.id for r in claimed] == [r.id for r in sorted(enqueued, key=claim_order)]


def test_claim_marks_the_job_running_under_a_lease(queue_store: QueueStore) -> None:
    record = queue_store.enqueue(make(attempts=0))
    before = time.time()

    claimed = claim(queue_store, "w1", None, 30.0)

    after = time.time()
    assert claimed is not None and claimed.id == record.id
    assert claimed.state == State.RUNNING
    assert claimed.worker == "w1"
    assert claimed.attempts == 1
    assert claimed.started_at is not None and before <= claimed.started_at <= after
    assert claimed.lease_until is not None
    assert before + 30.0 <= claimed.lease_until <= after + 30.0
    assert queue_store.get(record.id) == claimed
    assert (
        claimed.replace(
            state=State.QUEUED, worker=None, attempts=0, started_at=None, lease_until=None
        )
        == record
    )


def test_claim_ignores_jobs_not_due_yet(queue_store: QueueStore) -> None:
    queue_store.enqueue(make(run_at=time.time() + 60))

    assert claim(queue_store, "w1", None, LEASE) is None


def test_claim_ignores_deferred_jobs_within_their_grace(queue_store: QueueStore) -> None:
    queue_store.enqueue(make(state=State.DEFERRED))

    queue_store.recover(time.time())

    assert claim(queue_store, "w1", None, LEASE) is None


def test_claim_of_an_empty_store_returns_none(queue_store: QueueStore) -> None:
    assert claim(queue_store, "w1", None, LEASE) is None
    assert claim(queue_store, "w1", ["default"], LEASE) is None


def test_claim_takes_only_from_the_queues_given(queue_store: QueueStore) -> None:
    now = time.time()
    mail = queue_store.enqueue(make(queue="mail", run_at=now - 1))
    reports = queue_store.enqueue(make(queue="reports", priority=9, run_at=now - 1))
    default = queue_store.enqueue(make(run_at=now - 1000))

    first = claim(queue_store, "w1", ["mail", "nowhere"], LEASE)
    assert first is not None and first.id == mail.id
    assert claim(queue_store, "w1", ["mail"], LEASE) is None
    # Across several queues, priority then run_at still decide.
    second = claim(queue_store, "w1", ["default", "reports"], LEASE)
    assert second is not None and second.id == reports.id
    third = claim(queue_store, "w1", None, LEASE)
    assert third is not None and third.id == default.id


def test_claim_never_returns_a_job_twice_while_its_lease_holds(
    queue_store: QueueStore,
) -> None:
    record = queue_store.enqueue(make())

    first = claim(queue_store, "w1", None, LEASE)
    queue_store.recover(time.time())
    second = claim(queue_store, "w2", None, LEASE)

    assert first is not None and first.id == record.id
    assert second is None


def test_concurrent_claims_hand_out_each_job_once(queue_store: QueueStore) -> None:
    # Given 300 jobs and 6 threads claiming as fast as they can,
    ids = {queue_store.enqueue(make()).id for _ in range(300)}
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def claim_all(worker: str) -> None:
        mine = claimed.setdefault(worker, [])
        try:
            start.wait(timeout=10)
            while (record := claim(queue_store, worker, None, LEASE)) is not None:
                mine.append(record.id)
                assert queue_store.complete(record.id, worker, None)
        except BaseException as error:  # reported below, with the worker's name
            errors.append(error)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then every job was claimed by exactly one of them, and all ended succeeded.
    assert errors == []
    every_claim = [job_id for mine in claimed.values() for job_id in mine]
    assert sorted(every_claim) == sorted(ids)
    assert queue_store.stats(since=0.0).counts == {("default", State.SUCCEEDED): 300}


# -- QueueStore: recovery ------------------------------------------------------------


def test_recover_releases_deferred_jobs_older_than_the_grace(queue_store: QueueStore) -> None:
    now = time.time()
    # The request process died before the response went out: nobody releases it.
    stale = queue_store.enqueue(
        make(state=State.DEFERRED, created_at=now - 100, run_at=now - DEFER_GRACE - 1)
    )
    fresh = queue_store.enqueue(make(state=State.DEFERRED, run_at=now - DEFER_GRACE + 30))

    queue_store.recover(now)

    assert state_of(queue_store, stale.id) == State.QUEUED
    assert state_of(queue_store, fresh.id) == State.DEFERRED
    claimed = claim(queue_store, "w1", None, LEASE)
    assert claimed is not None and claimed.id == stale.id


def test_claim_recovers_on_its_own(queue_store: QueueStore) -> None:
    # Recovery is "from time to time" in claim; the first claim of a store does it.
    now = time.time()
    stale = queue_store.enqueue(make(state=State.DEFERRED, run_at=now - DEFER_GRACE - 1))

    claimed = claim(queue_store, "w1", None, LEASE)

    assert claimed is not None and claimed.id == stale.id


def test_expired_lease_makes_the_job_claimable_again(queue_store: QueueStore) -> None:
    record = queue_store.enqueue(make(max_retries=0))

    lost = lose_lease(queue_store, "w1")

    requeued = queue_store.get(record.id)
    assert requeued is not None
    assert requeued.state == State.QUEUED
    assert requeued.worker is None and requeued.lease_until is None
    assert requeued.attempts == 1  # the lost attempt counts
    assert lost.started_at is not None and requeued.run_at >= lost.started_at
    again = claim(queue_store, "w2", None, LEASE)
    assert again is not None and again.id == record.id
    assert again.worker == "w2"
    assert again.attempts == 2


def test_recover_leaves_jobs_whose_lease_holds(queue_store: QueueStore) -> None:
    claimed = running(queue_store, lease=30.0)

    queue_store.recover(time.time())

    assert queue_store.get(claimed.id) == claimed


@pytest.mark.parametrize("max_retries", [0, 2])
def test_job_that_loses_every_worker_is_failed_in_the_end(
    queue_store: QueueStore, max_retries: int
) -> None:
    record = queue_store.enqueue(make(max_retries=max_retries))
    allowed = max_retries + 1 + LOST_WORKER_ATTEMPTS

    for attempt in range(1, allowed):
        claimed = lose_lease(queue_store, f"w{attempt}")
        assert claimed.attempts == attempt
        assert state_of(queue_store, record.id) == State.QUEUED
    last = lose_lease(queue_store, "last")

    assert last.attempts == allowed
    failed = queue_store.get(record.id)
    assert failed is not None
    assert failed.state == State.FAILED
    assert failed.error == LOST_ERROR
    assert failed.worker is None and failed.lease_until is None
    assert failed.finished_at is not None
    assert claim(queue_store, "w", None, LEASE) is None


# -- QueueStore: only the lease holder finishes an attempt ---------------------------


def _complete(store: QueueStore, job_id: str, worker: str) -> bool:
    return store.complete(job_id, worker, "1")


def _fail(store: QueueStore, job_id: str, worker: str) -> bool:
    return store.fail(job_id, worker, "builtins.RuntimeError: boom", None)


def _fail_for_retry(store: QueueStore, job_id: str, worker: str) -> bool:
    return store.fail(job_id, worker, "builtins.RuntimeError: boom", time.time() - 1)


def _requeue(store: QueueStore, job_id: str, worker: str) -> bool:
    return store.requeue(job_id, worker)


def _mark_cancelled(store: QueueStore, job_id: str, worker: str) -> bool:
    return store.mark_cancelled(job_id, worker)


def _extend_lease(store: QueueStore, job_id: str, worker: str) -> bool:
    return store.extend_lease(job_id, worker, 60.0)


HOLDER_ONLY = pytest.mark.parametrize(
    "finish",
    [_complete, _fail, _fail_for_retry, _requeue, _mark_cancelled, _extend_lease],
    ids=["complete", "fail", "fail_for_retry", "requeue", "mark_cancelled", "extend_lease"],
)


@HOLDER_ONLY
def test_another_worker_cannot_touch_a_running_job(
    queue_store: QueueStore, finish: cabc.Callable[[QueueStore, str, str], bool]
) -> None:
    claimed = running(queue_store, worker="w1")

    assert finish(queue_store, claimed.id, "w2") is False

    assert queue_store.get(claimed.id) == claimed


@HOLDER_ONLY
def test_worker_whose_lease_was_taken_over_cannot_touch_the_job(
    queue_store: QueueStore, finish: cabc.Callable[[QueueStore, str, str], bool]
) -> None:
    # Given w1 lost its lease and w2 took the job over,
    queue_store.enqueue(make(max_retries=3))
    lost = lose_lease(queue_store, "w1")
    taken = claim(queue_store, "w2", None, LEASE)
    assert taken is not None and taken.id == lost.id

    # when w1 comes back and tries to finish its attempt,
    is_done = finish(queue_store, lost.id, "w1")

    # then nothing happens: the job is w2's.
    assert is_done is False
    assert queue_store.get(lost.id) == taken


@HOLDER_ONLY
def test_a_job_that_is_not_running_cannot_be_finished(
    queue_store: QueueStore, finish: cabc.Callable[[QueueStore, str, str], bool]
) -> None:
    claimed = running(queue_store, worker="w1")
    queue_store.complete(claimed.id, "w1", "1")
    done = queue_store.get(claimed.id)
    # A queued job naming w1 (as a stale record might) is still not w1's to finish.
    queued = queue_store.enqueue(make(worker="w1", run_at=time.time() + 60))

    assert finish(queue_store, queued.id, "w1") is False
    assert finish(queue_store, claimed.id, "w1") is False
    assert finish(queue_store, new_job_id(), "w1") is False

    assert queue_store.get(queued.id) == queued
    assert queue_store.get(claimed.id) == done


@HOLDER_ONLY
def test_the_lease_holder_can_finish_its_attempt(
    queue_store: QueueStore, finish: cabc.Callable[[QueueStore, str, str], bool]
) -> None:
    claimed = running(queue_store, worker="w1")

    assert finish(queue_store, claimed.id, "w1") is True

    assert queue_store.get(claimed.id) != claimed


# -- QueueStore: each way an attempt ends --------------------------------------------


def test_extend_lease_pushes_the_lease_from_now(queue_store: QueueStore) -> None:
    claimed = running(queue_store, lease=1.0)
    before = time.time()

    assert queue_store.extend_lease(claimed.id, "w1", 120.0) is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.lease_until is not None
    assert before + 120.0 <= record.lease_until <= time.time() + 120.0
    assert record.replace(lease_until=claimed.lease_until) == claimed


def test_extended_lease_survives_recovery(queue_store: QueueStore) -> None:
    claimed = running(queue_store, lease=0.0)

    assert queue_store.extend_lease(claimed.id, "w1", 60.0)
    queue_store.recover(time.time())

    assert state_of(queue_store, claimed.id) == State.RUNNING


def test_complete_stores_the_result_and_ends_the_lease(queue_store: QueueStore) -> None:
    claimed = running(queue_store)
    before = time.time()

    assert queue_store.complete(claimed.id, "w1", '{"sum": 3}') is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.SUCCEEDED
    assert record.result == '{"sum": 3}'
    assert record.progress == 1.0
    assert record.finished_at is not None and before <= record.finished_at <= time.time()
    assert record.worker is None and record.lease_until is None
    assert record.attempts == 1
    assert claim(queue_store, "w1", None, LEASE) is None


def test_complete_and_claim_many_records_the_success_and_takes_the_next_job(
    queue_store: QueueStore,
) -> None:
    first = running(queue_store)
    second = queue_store.enqueue(make())

    [is_completed], [claimed] = queue_store.complete_and_claim_many(
        [(first.id, "7")], "w1", None, LEASE, 1
    )

    assert is_completed is True
    done = queue_store.get(first.id)
    assert done is not None and done.state == State.SUCCEEDED and done.result == "7"
    assert claimed is not None and claimed.id == second.id
    assert claimed.state == State.RUNNING and claimed.worker == "w1"


def test_complete_and_claim_many_completes_even_when_nothing_is_left_to_claim(
    queue_store: QueueStore,
) -> None:
    only = running(queue_store)

    assert queue_store.complete_and_claim_many([(only.id, None)], "w1", None, LEASE, 1) == (
        [True],
        [],
    )
    done = queue_store.get(only.id)
    assert done is not None and done.state == State.SUCCEEDED


def test_complete_and_claim_many_by_another_worker_changes_only_the_claim(
    queue_store: QueueStore,
) -> None:
    held = running(queue_store, worker="w1")
    waiting = queue_store.enqueue(make())

    [is_completed], [claimed] = queue_store.complete_and_claim_many(
        [(held.id, "1")], "w2", None, LEASE, 1
    )

    assert is_completed is False
    still = queue_store.get(held.id)
    assert still is not None and still.state == State.RUNNING and still.worker == "w1"
    assert claimed is not None and claimed.id == waiting.id and claimed.worker == "w2"


def test_complete_and_claim_many_records_every_success_then_claims_the_best_jobs(
    queue_store: QueueStore,
) -> None:
    first = running(queue_store)
    second = queue_store.enqueue(make())
    claimed_second = claim(queue_store, "w1", None, LEASE)
    assert claimed_second is not None and claimed_second.id == second.id
    low = queue_store.enqueue(make(priority=-1))
    old = queue_store.enqueue(make(run_at=time.time() - 60))
    new = queue_store.enqueue(make())
    urgent = queue_store.enqueue(make(priority=5))

    before = time.time()
    completed, claimed = queue_store.complete_and_claim_many(
        [(first.id, "1"), (second.id, None)], "w1", None, LEASE, 3
    )

    assert completed == [True, True]
    for job_id in (first.id, second.id):
        assert state_of(queue_store, job_id) == State.SUCCEEDED
    # Best first, as three claims in a row would have returned them,
    assert [record.id for record in claimed] == [urgent.id, old.id, new.id]
    # each running under the one lease, and the fourth left queued.
    for record in claimed:
        assert record.state == State.RUNNING and record.worker == "w1"
        assert record.attempts == 1
        assert record.lease_until is not None and record.lease_until >= before + LEASE
    assert state_of(queue_store, low.id) == State.QUEUED


def test_complete_and_claim_many_with_limit_0_only_records(queue_store: QueueStore) -> None:
    done = running(queue_store)
    waiting = queue_store.enqueue(make())

    assert queue_store.complete_and_claim_many([(done.id, "2")], "w1", None, LEASE, 0) == (
        [True],
        [],
    )
    assert state_of(queue_store, done.id) == State.SUCCEEDED
    assert state_of(queue_store, waiting.id) == State.QUEUED


def test_complete_and_claim_many_takes_what_there_is_and_only_from_its_queues(
    queue_store: QueueStore,
) -> None:
    mails = [queue_store.enqueue(make(queue="mail")) for _ in range(2)]
    queue_store.enqueue(make(queue="reports"))

    completed, claimed = queue_store.complete_and_claim_many([], "w1", ["mail"], LEASE, 8)

    assert completed == []
    assert {record.id for record in claimed} == {record.id for record in mails}
    assert queue_store.complete_and_claim_many([], "w2", ["mail"], LEASE, 8) == ([], [])


def claimed_and_failed(queue_store: QueueStore, **fields: t.Any) -> JobRecord:
    """A job claimed once, failed, and runnable again (a retry): attempts is 1."""
    job = queue_store.enqueue(make(**fields))
    held = claim(queue_store, "w0", None, LEASE)
    assert held is not None and held.id == job.id
    assert queue_store.fail(job.id, "w0", "boom", retry_at=time.time() - 1)
    return job


# A batch's worker that dies costs each of its jobs an attempt, run or not: so a job
# claimed before never shares a batch again, and cannot take the same others down.


@pytest.mark.parametrize("queues", [None, ["default"]])
def test_a_best_job_claimed_before_is_claimed_alone(
    queue_store: QueueStore, queues: list[str] | None
) -> None:
    again = claimed_and_failed(queue_store, priority=1)
    fresh = [queue_store.enqueue(make()) for _ in range(3)]

    _, claimed = queue_store.complete_and_claim_many([], "w1", queues, LEASE, 8)
    assert [(record.id, record.attempts) for record in claimed] == [(again.id, 2)]
    _, claimed = queue_store.complete_and_claim_many([], "w1", queues, LEASE, 8)
    assert {record.id for record in claimed} == {record.id for record in fresh}


@pytest.mark.parametrize("queues", [None, ["default"]])
def test_a_batch_leaves_out_a_job_claimed_before(
    queue_store: QueueStore, queues: list[str] | None
) -> None:
    again = claimed_and_failed(queue_store, priority=-1)
    fresh = [queue_store.enqueue(make()) for _ in range(3)]

    _, claimed = queue_store.complete_and_claim_many([], "w1", queues, LEASE, 8)
    assert {record.id for record in claimed} == {record.id for record in fresh}
    assert state_of(queue_store, again.id) == State.QUEUED
    _, claimed = queue_store.complete_and_claim_many([], "w1", queues, LEASE, 8)
    assert [record.id for record in claimed] == [again.id]


def test_complete_and_claim_many_does_not_record_a_job_another_worker_holds(
    queue_store: QueueStore,
) -> None:
    mine = running(queue_store, worker="w1")
    theirs = queue_store.enqueue(make())
    assert claim(queue_store, "w2", None, LEASE) is not None

    completed, claimed = queue_store.complete_and_claim_many(
        [(theirs.id, "x"), (mine.id, "y")], "w1", None, LEASE, 8
    )

    assert completed == [False, True]
    assert claimed == []
    still = queue_store.get(theirs.id)
    assert still is not None and still.state == State.RUNNING and still.worker == "w2"


def test_complete_accepts_no_result(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    queue_store.complete(claimed.id, "w1", None)

    record = queue_store.get(claimed.id)
    assert record is not None and record.state == State.SUCCEEDED and record.result is None


def test_fail_without_retry_fails_the_job(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    assert queue_store.fail(claimed.id, "w1", "builtins.ValueError: bad\nTraceback", None)

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.FAILED
    assert record.error == "builtins.ValueError: bad\nTraceback"
    assert record.finished_at is not None
    assert record.worker is None and record.lease_until is None
    assert claim(queue_store, "w1", None, LEASE) is None


def test_fail_with_retry_at_queues_the_job_for_later(queue_store: QueueStore) -> None:
    claimed = running(queue_store, max_retries=3)
    retry_at = time.time() + 60

    assert queue_store.fail(claimed.id, "w1", "builtins.ValueError: bad", retry_at) is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.QUEUED
    assert record.run_at == retry_at
    assert record.error == "builtins.ValueError: bad"  # the last error stays visible while it waits
    assert record.attempts == 1
    assert record.finished_at is None
    assert record.worker is None and record.lease_until is None
    assert claim(queue_store, "w1", None, LEASE) is None


def test_retry_attempt_is_claimed_once_due_and_counts(queue_store: QueueStore) -> None:
    claimed = running(queue_store, max_retries=3)
    queue_store.fail(claimed.id, "w1", "builtins.ValueError: bad", time.time() - 1)

    again = claim(queue_store, "w2", None, LEASE)

    assert again is not None and again.id == claimed.id
    assert again.attempts == 2


def test_requeue_gives_the_attempt_back(queue_store: QueueStore) -> None:
    claimed = running(queue_store)
    before = time.time()

    assert queue_store.requeue(claimed.id, "w1") is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.QUEUED
    assert record.attempts == 0
    assert record.worker is None and record.lease_until is None
    assert before <= record.run_at <= time.time()
    again = claim(queue_store, "w2", None, LEASE)
    assert again is not None and again.id == claimed.id and again.attempts == 1


def test_mark_cancelled_ends_the_job_cancelled(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    assert queue_store.mark_cancelled(claimed.id, "w1") is True

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state == State.CANCELLED
    assert record.finished_at is not None
    assert record.worker is None and record.lease_until is None


# -- QueueStore: progress ------------------------------------------------------------


def test_set_progress_records_value_and_message(queue_store: QueueStore) -> None:
    claimed = running(queue_store)

    assert queue_store.set_progress(claimed.id, "w1", 0.25, "a quarter") is False
    record = queue_store.get(claimed.id)
    assert record is not None and (record.progress, record.message) == (0.25, "a quarter")

    assert queue_store.set_progress(claimed.id, "w1", 0.5, None) is False
    record = queue_store.get(claimed.id)
    assert record is not None and (record.progress, record.message) == (0.5, None)


def test_set_progress_leaves_a_job_that_is_not_running_alone(queue_store: QueueStore) -> None:
    queued = queue_store.enqueue(make())

    assert queue_store.set_progress(queued.id, "w1", 0.5, "nope") is False
    assert queue_store.set_progress(new_job_id(), "w1", 0.5, "nope") is False

    assert queue_store.get(queued.id) == queued


def test_set_progress_by_a_worker_that_lost_the_job_changes_nothing(
    queue_store: QueueStore,
) -> None:
    claimed = running(queue_store, worker="w1")
    queue_store.cancel(claimed.id)

    assert queue_store.set_progress(claimed.id, "w2", 0.9, "not mine") is False

    record = queue_store.get(claimed.id)
    assert record is not None and (record.progress, record.message) == (None, None)


def test_set_progress_after_the_job_finished_changes_nothing(queue_store: QueueStore) -> None:
    claimed = running(queue_store)
    queue_store.cancel(claimed.id)
    queue_store.mark_cancelled(claimed.id, "w1")
    done = queue_store.get(claimed.id)

    assert queue_store.set_progress(claimed.id, "w1", 0.9, "late") is False

    assert queue_store.get(claimed.id) == done


# -- Secrets: a finished job never holds them ---------------------------------------

SECRETS = '{"Authorization": "Bearer xyz"}'


def _lose_for_good(store: QueueStore, job_id: str, worker: str) -> bool:
    # With max_retries=0 the lease is lost LOST_WORKER_ATTEMPTS more times first.
    store.extend_lease(job_id, worker, 0.0)
    for attempt in range(LOST_WORKER_ATTEMPTS):
        store.recover(time.time())
        assert claim(store, f"again{attempt}", None, 0.0) is not None
    store.recover(time.time())
    return True


@pytest.mark.parametrize(
    "finish",
    [_complete, _fail, _mark_cancelled, _lose_for_good],
    ids=["complete", "fail", "mark_cancelled", "lost"],
)
def test_finishing_a_running_job_wipes_its_secrets(
    queue_store: QueueStore, finish: cabc.Callable[[QueueStore, str, str], bool]
) -> None:
    claimed = running(queue_store, secrets=SECRETS, max_retries=0)
    assert claimed.secrets == SECRETS

    assert finish(queue_store, claimed.id, "w1")

    record = queue_store.get(claimed.id)
    assert record is not None
    assert record.state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)
    assert record.secrets is None


@pytest.mark.parametrize("state", [State.DEFERRED, State.QUEUED])
def test_cancelling_a_waiting_job_wipes_its_secrets(store: Store, state: State) -> None:
    record = store.enqueue(make(state=state, secrets=SECRETS))

    store.cancel(record.id)

    cancelled = store.get(record.id)
    assert cancelled is not None and cancelled.secrets is None


@pytest.mark.parametrize(
    "again",
    [_fail_for_retry, _requeue, _extend_lease],
    ids=["fail_for_retry", "requeue", "extend_lease"],
)
def test_an_attempt_that_will_run_again_keeps_its_secrets(
    queue_store: QueueStore, again: cabc.Callable[[QueueStore, str, str], bool]
) -> None:
    claimed = running(queue_store, secrets=SECRETS, max_retries=3)

    assert again(queue_store, claimed.id, "w1")

    record = queue_store.get(claimed.id)
    assert record is not None and record.secrets == SECRETS


def test_a_lost_attempt_that_will_run_again_keeps_its_secrets(queue_store: QueueStore) -> None:
    record = queue_store.enqueue(make(secrets=SECRETS, max_retries=1))

    lose_lease(queue_store, "w1")

    requeued = queue_store.get(record.id)
    assert requeued is not None
    assert requeued.state == State.QUEUED and requeued.secrets == SECRETS


# -- Store: start (an executor handed a job id begins its attempt) --------------------


def test_start_runs_a_queued_job_under_the_worker_whatever_its_run_at(store: Store) -> None:
    # Given a job queued for an hour from now (an executor decides when it is due),
    later = store.enqueue(make(run_at=time.time() + 3600))

    started = store.start(later.id, "engine-1", LEASE)

    assert started is not None
    assert (started.state, started.worker, started.attempts) == (State.RUNNING, "engine-1", 1)
    assert started.lease_until is not None and started.lease_until > time.time()
    assert store.get(later.id) == started


def test_start_of_the_same_id_twice_starts_it_once(store: Store) -> None:
    record = store.enqueue(make())

    first = store.start(record.id, "engine-1", LEASE)
    second = store.start(record.id, "engine-2", LEASE)

    assert first is not None and second is None
    assert store.complete(record.id, "engine-2", "1") is False
    assert store.complete(record.id, "engine-1", "1") is True
    assert state_of(store, record.id) == State.SUCCEEDED


@pytest.mark.parametrize("state", [State.DEFERRED, State.CANCELLED, State.SUCCEEDED])
def test_start_refuses_a_job_that_is_not_queued(store: Store, state: State) -> None:
    record = store.enqueue(make(state=state))

    assert store.start(record.id, "engine-1", LEASE) is None
    assert state_of(store, record.id) == state
    assert store.start("no-such-job", "engine-1", LEASE) is None


def test_stores_declare_their_capabilities_and_reach(tmp_path: pathlib.Path) -> None:
    for name, factory in STORES.items():
        opened = factory(tmp_path / name)
        try:
            assert opened.capabilities == ALL_CAPABILITIES, name
            # Neither the process's memory nor one machine's file spans machines.
            assert opened.is_shared_across_machines is (name in ACROSS_MACHINES), name
        finally:
            opened.close()


def test_a_closed_store_connects_again_when_used(store: Store) -> None:
    # Given a job stored, then the store closed (as init_app does after validating it),
    record = store.enqueue(make())
    store.close()

    # When it is used again, it works on what was stored before.
    again = store.enqueue(make())

    assert state_of(store, record.id) == State.QUEUED
    assert {r.id for r in store.list()} == {record.id, again.id}


@pytest.mark.parametrize("unique", [None, "key"])
def test_enqueueing_an_id_that_is_stored_already_raises_and_changes_nothing(
    store: Store, unique: str | None
) -> None:
    first = store.enqueue(make(state=State.SUCCEEDED, result="1"))
    with pytest.raises(StoreError, match="is stored already"):
        store.enqueue(make(id=first.id, unique_key=unique))
    assert store.get(first.id) == first


# -- ObservableStore: the dashboard's queries ---------------------------------------
#
# Imports here, not at the top, so that this section stays one block to merge.

from flask_afterward.stores.base import JobFilter  # noqa: E402
from flask_afterward.stores.base import ObservableStore  # noqa: E402
from flask_afterward.stores.base import SERIES_KEEP  # noqa: E402
from flask_afterward.stores.base import WorkerBeat  # noqa: E402

#: Stores the dashboard can show.
OBSERVABLE_STORES: dict[str, cabc.Callable[[pathlib.Path], ObservableStore]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


@pytest.fixture(params=sorted(OBSERVABLE_STORES))
def observable(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> cabc.Iterator[ObservableStore]:
    opened = OBSERVABLE_STORES[request.param](tmp_path)
    yield opened
    opened.close()


def finish(store: ObservableStore, record: JobRecord, state: State, **fields: t.Any) -> JobRecord:
    """Store ``record`` as already finished in ``state`` (as eager mode stores one)."""
    now = time.time()
    values: dict[str, t.Any] = {"started_at": now - 1, "finished_at": now, "state": state}
    values.update(fields)
    return store.enqueue(record.replace(**values))


def ids(records: cabc.Iterable[JobRecord]) -> list[str]:
    return [record.id for record in records]


def test_observable_stores_implement_the_protocol(observable: ObservableStore) -> None:
    assert isinstance(observable, ObservableStore)


def test_overview_counts_per_queue_and_state_with_scheduled_apart(
    observable: ObservableStore,
) -> None:
    now = time.time()
    observable.enqueue(make(queue="mail", run_at=now - 30))
    observable.enqueue(make(queue="mail", run_at=now - 10))
    observable.enqueue(make(queue="mail", run_at=now + 3600))
    observable.enqueue(make(state=State.DEFERRED))
    finish(observable, make(queue="mail"), State.FAILED)
    finish(observable, make(), State.SUCCEEDED, result_ttl=1, finished_at=now - 10)

    overview = observable.overview(now)

    assert overview.counts == {
        ("mail", "queued"): 2,
        ("mail", "scheduled"): 1,
        ("default", "deferred"): 1,
        ("mail", "failed"): 1,
    }
    assert overview.oldest_runnable == {"mail": pytest.approx(now - 30)}


def test_browse_filters_by_state_queue_and_task(observable: ObservableStore) -> None:
    now = time.time()
    wanted = observable.enqueue(make(queue="mail", task="tests.send"))
    observable.enqueue(make(queue="mail", task="tests.other"))
    observable.enqueue(make(queue="web", task="tests.send"))
    later = observable.enqueue(make(queue="mail", task="tests.send", run_at=now + 60))
    failed = finish(observable, make(queue="mail", task="tests.send"), State.FAILED)

    def find(**where: t.Any) -> list[str]:
        return ids(observable.browse(JobFilter(**where), now=now).records)

    assert find(state="queued", queue="mail", task="tests.send") == [wanted.id]
    assert find(state="scheduled") == [later.id]
    assert find(state="failed") == [failed.id]
    assert find(queue="mail", task="tests.send") == [failed.id, later.id, wanted.id]


def test_browse_pages_with_a_cursor_newest_first(observable: ObservableStore) -> None:
    records = [observable.enqueue(make()) for _ in range(7)]
    newest_first = ids(reversed(records))

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = observable.browse(JobFilter(), limit=3, cursor=cursor, now=time.time())
        seen += ids(page.records)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == newest_first
    assert pages == 3


def test_browse_of_a_finished_state_is_newest_finished_first(
    observable: ObservableStore,
) -> None:
    now = time.time()
    first = finish(observable, make(), State.FAILED, finished_at=now - 30)
    second = finish(observable, make(), State.FAILED, finished_at=now - 10)
    third = finish(observable, make(), State.FAILED, finished_at=now - 20)

    page = observable.browse(JobFilter(state="failed"), limit=2, now=now)
    rest = observable.browse(JobFilter(state="failed"), limit=2, cursor=page.next_cursor, now=now)

    assert ids(page.records) == [second.id, third.id]
    assert ids(rest.records) == [first.id] and rest.next_cursor is None


def test_browse_cursor_is_stable_when_jobs_are_enqueued_meanwhile(
    observable: ObservableStore,
) -> None:
    records = [observable.enqueue(make()) for _ in range(4)]
    page = observable.browse(JobFilter(), limit=2, now=time.time())

    observable.enqueue(make())
    rest = observable.browse(JobFilter(), limit=2, cursor=page.next_cursor, now=time.time())

    assert ids(rest.records) == [records[1].id, records[0].id]


def test_search_matches_task_names_and_arguments_case_insensitively(
    observable: ObservableStore,
) -> None:
    mail = observable.enqueue(make(task="shop.send_mail", payload='{"args": ["Ada@Example.org"]}'))
    report = observable.enqueue(make(task="shop.report", payload='{"args": [2026]}'))
    observable.rollup(time.time())  # indexes what is there; newer rows are found too
    late = observable.enqueue(make(task="shop.report", payload='{"args": ["ada@example.org"]}'))

    def search(text: str) -> list[str]:
        return ids(observable.browse(JobFilter(search=text), now=time.time()).records)

    assert search("ada@example") == [late.id, mail.id]
    assert search("SEND_MAIL") == [mail.id]
    assert search("2026") == [report.id]
    assert search("nowhere") == []


def test_search_is_refused_below_three_characters() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        JobFilter(search="ab")


def test_search_still_finds_jobs_after_deletes_and_reindexing(
    observable: ObservableStore,
) -> None:
    # Given indexed jobs, the newest of which is deleted (sqlite then reuses its rowid)
    keep = observable.enqueue(make(payload='{"args": ["needle-1"]}'))
    gone = observable.enqueue(make(payload='{"args": ["needle-2"]}'))
    observable.rollup(time.time())
    assert observable.delete(gone.id)
    # When a new job takes its place
    new = observable.enqueue(make(payload='{"args": ["needle-3"]}'))
    found_before = ids(observable.browse(JobFilter(search="needle"), now=time.time()).records)
    observable.rollup(time.time() + 61)
    found_after = ids(observable.browse(JobFilter(search="needle"), now=time.time()).records)

    # Then search finds exactly the jobs that exist, before and after indexing
    assert found_before == found_after == [new.id, keep.id]


def test_delete_forgets_a_job_but_not_a_running_one(observable: ObservableStore) -> None:
    waiting = observable.enqueue(make(state=State.DEFERRED))
    assert observable.delete(waiting.id) is True
    assert observable.get(waiting.id) is None
    assert observable.delete(waiting.id) is False

    held = running(observable)
    assert observable.delete(held.id) is False
    assert state_of(observable, held.id) == State.RUNNING


def test_bulk_actions_touch_only_the_jobs_matching(observable: ObservableStore) -> None:
    now = time.time()
    mail = [observable.enqueue(make(queue="mail")) for _ in range(3)]
    web = observable.enqueue(make(queue="web"))
    failed = [finish(observable, make(queue="mail"), State.FAILED) for _ in range(2)]

    assert observable.cancel_matching(JobFilter(state="queued", queue="mail"), now) == 3
    assert {state_of(observable, r.id) for r in mail} == {State.CANCELLED}
    assert state_of(observable, web.id) == State.QUEUED

    assert observable.retry_matching(JobFilter(state="failed"), now) == 2
    assert {state_of(observable, r.id) for r in failed} == {State.QUEUED}

    assert observable.delete_matching(JobFilter(state="cancelled"), now) == 3
    assert all(observable.get(r.id) is None for r in mail)
    assert observable.get(web.id) is not None


def test_bulk_retry_queues_one_job_per_unique_key(observable: ObservableStore) -> None:
    for _ in range(2):
        finish(observable, make(unique_key="report:1"), State.FAILED)

    assert observable.retry_matching(JobFilter(state="failed"), time.time()) == 1


def test_bulk_cancel_requests_the_cancel_of_running_jobs(observable: ObservableStore) -> None:
    held = running(observable)

    assert observable.cancel_matching(JobFilter(state="running"), time.time()) == 1
    record = observable.get(held.id)
    assert record is not None and record.is_cancel_requested


def test_heartbeats_replace_the_last_and_old_workers_are_forgotten(
    observable: ObservableStore,
) -> None:
    now = time.time()

    def beat(worker: str, seen_at: float, job_id: str | None = None) -> WorkerBeat:
        return WorkerBeat(
            id=worker,
            host="web-1",
            pid=42,
            thread=worker,
            queues=("mail",),
            job_id=job_id,
            seen_at=seen_at,
        )

    observable.heartbeat([beat("w1", now - 5), beat("w2", now - 7200)])
    observable.heartbeat([beat("w1", now, job_id="abc")])
    assert observable.workers() == [beat("w1", now, "abc"), beat("w2", now - 7200)]
    assert observable.workers()[1].is_stale(now)

    observable.rollup(now)

    assert observable.workers() == [beat("w1", now, "abc")]
    assert not observable.workers()[0].is_stale(now)


def test_rollup_counts_finished_jobs_per_minute_with_runtime_percentiles(
    observable: ObservableStore,
) -> None:
    # Given jobs that finished two minutes ago, with run times of 1 to 10 s
    minute = (time.time() // 60 - 2) * 60
    for seconds in range(1, 11):
        finish(
            observable,
            make(queue="mail"),
            State.SUCCEEDED,
            started_at=minute + 20 - seconds,
            finished_at=minute + 20,
        )
    finish(observable, make(queue="mail"), State.FAILED, finished_at=minute + 30)
    # When the rollup runs (twice: the second time adds nothing)
    observable.rollup(time.time())
    observable.rollup(time.time() + 61)

    # Then the minute holds the counts and percentiles
    series = [m for m in observable.series(minute - 60) if m.minute == minute]
    assert [(m.queue, m.state, m.count) for m in series] == [
        ("mail", State.FAILED, 1),
        ("mail", State.SUCCEEDED, 10),
    ]
    succeeded = series[1]
    assert (succeeded.p50, succeeded.p95, succeeded.p99) == pytest.approx((5.0, 10.0, 10.0))


def test_rollup_keeps_the_series_72_hours(observable: ObservableStore) -> None:
    now = time.time()
    minute = (now // 60 - 2) * 60
    finish(observable, make(), State.SUCCEEDED, finished_at=minute + 1)
    observable.rollup(now)
    assert observable.series(0)

    observable.rollup(now + SERIES_KEEP + 120)

    assert observable.series(0) == []


def test_sqlite_search_and_state_lists_use_indexes(tmp_path: pathlib.Path) -> None:
    from flask_afterward.stores.sqlite import _dash_where

    store = _sqlite(tmp_path)
    try:
        db = store._db

        def plan(where: JobFilter) -> str:
            sql, params = _dash_where("dash_select", where, time.time())
            sql += "\nORDER BY finished_at DESC, rowid DESC" if where.is_finished else ""
            rows = db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            return "\n".join(row[-1] for row in rows)

        search = plan(JobFilter(search="needle"))
        assert "VIRTUAL TABLE INDEX" in search and "afterward_search" in search
        assert "afterward_jobs_finished" in plan(JobFilter(state="failed"))
        assert "SCAN afterward_jobs\n" not in plan(JobFilter(state="failed")) + "\n"
    finally:
        store.close()
