"""What only the redis store has: URLs, its keys in Redis, and other processes.

The behaviour every store shares is in ``test_contract.py``. Here: ``open_store``
URLs and their errors, that nothing imports redis-py unless asked, that no key of a
pruned job is left behind, exact ``run_at`` order, and the promises that involve
more than one process or a server restart: claims from two processes at once,
``fork()``, and reconnecting after Redis restarts. Other processes are fresh
interpreters (``subprocess``), except in the test that is about fork.
"""

from __future__ import annotations

import collections.abc as cabc
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from flask_afterward.config import Settings
from flask_afterward.errors import ConfigurationError
from flask_afterward.errors import MissingDependency
from flask_afterward.records import State
from flask_afterward.stores import open_store
from flask_afterward.stores.redis import RedisStore
from tests import redis_server
from tests.tier2 import claim

from .test_contract import make

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not redis_server.AVAILABLE, reason="redis-server is not installed"),
]

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def store() -> cabc.Iterator[RedisStore]:
    redis_server.server()
    opened = RedisStore(redis_server.URL, prefix=redis_server.unique_prefix())
    yield opened
    opened.close()


def keys(store: RedisStore) -> set[str]:
    return set(store._client.keys(f"{store.prefix}:*"))


def settings(url: str) -> Settings:
    return Settings(store=url)


# -- open_store ----------------------------------------------------------------------


def test_open_store_opens_a_redis_url_with_its_options(tmp_path: pathlib.Path) -> None:
    redis_server.server()
    url = f"{redis_server.URL}?prefix=myapp&timeout=2.5"

    opened = open_store(settings(url), instance_path=str(tmp_path))

    try:
        assert isinstance(opened, RedisStore)
        assert opened.prefix == "myapp"
        assert opened.url == redis_server.URL  # our options are not redis-py's
        record = opened.enqueue(make())
        assert opened.get(record.id) == record
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("query", "named"),
    [("db=2", "'db'"), ("prefix=", "prefix=''"), ("timeout=0", "timeout='0'")],
)
def test_open_store_refuses_unknown_or_bad_options(
    tmp_path: pathlib.Path, query: str, named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named) as raised:
        open_store(settings(f"{redis_server.URL}?{query}"), instance_path=str(tmp_path))

    if query.startswith("db"):
        assert "'prefix'" in str(raised.value) and "'timeout'" in str(raised.value)


def test_an_unreachable_redis_is_a_configuration_error_naming_the_url(
    tmp_path: pathlib.Path,
) -> None:
    # Nothing listens on a port just found free; the password must not be shown.
    url = f"redis://:hunter2@127.0.0.1:{redis_server.free_port()}/0"

    with pytest.raises(ConfigurationError) as raised:
        open_store(settings(url + "?timeout=2"), instance_path=str(tmp_path))

    message = str(raised.value)
    assert url.replace("hunter2", "***") in message
    assert "hunter2" not in message
    assert "Start Redis there" in message


def test_without_redis_py_the_error_names_the_extra(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # "import redis" fails
    monkeypatch.delitem(sys.modules, "flask_afterward.stores.redis")

    with pytest.raises(MissingDependency, match=r"pip install flask-afterward\[redis\]"):
        open_store(settings(redis_server.URL), instance_path=str(tmp_path))


def test_flask_afterward_never_imports_redis_unless_the_store_asks() -> None:
    code = (
        "import sys, flask, flask_afterward\n"
        "app = flask.Flask('x')\n"
        "app.config['AFTERWARD_STORE'] = 'memory://'\n"
        "flask_afterward.Afterward(app)\n"
        "assert 'redis' not in sys.modules, 'redis was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# -- Keys ----------------------------------------------------------------------------


def test_pruned_jobs_leave_no_key_behind(store: RedisStore) -> None:
    # Given jobs through every way of ending, with unique keys,
    done = store.enqueue(make(unique_key="a", result_ttl=10.0))
    store.enqueue(make(unique_key="b", queue="mail", priority=3, result_ttl=10.0))
    deferred = store.enqueue(make(state=State.DEFERRED, result_ttl=10.0))
    held = claim(store, "w1", ["default"], 30.0)
    assert held is not None and held.id == done.id
    assert store.complete(done.id, "w1", "1")
    failed = claim(store, "w1", ["mail"], 30.0)
    assert failed is not None and store.fail(failed.id, "w1", "boom", None)
    assert store.cancel(deferred.id)
    assert not {key for key in keys(store) if ":unique:" in key}

    # when all of them have expired and are pruned,
    assert store.prune(time.time() + 11) == 3

    # then only the sequence and the (zero) counters remain.
    assert keys(store) == {f"{store.prefix}:seq", f"{store.prefix}:counts"}
    assert store.stats(since=0.0).counts == {}


def test_a_unique_key_is_held_only_while_its_job_is_active(store: RedisStore) -> None:
    record = store.enqueue(make(unique_key="report:1"))
    unique = f"{store.prefix}:unique:report:1"
    assert store._client.get(unique) == record.id

    held = claim(store, "w1", None, 30.0)
    assert held is not None and store._client.get(unique) == record.id
    store.complete(record.id, "w1", None)

    assert store._client.exists(unique) == 0


def test_claims_keep_run_at_order_to_the_microsecond(store: RedisStore) -> None:
    # A score mixing priority and run_at would lose this; one zset per level does not.
    base = time.time() - 10
    later = store.enqueue(make(run_at=base + 2e-6, priority=2**40))
    sooner = store.enqueue(make(run_at=base + 1e-6, priority=2**40))

    first = claim(store, "w1", None, 30.0)
    second = claim(store, "w1", None, 30.0)

    assert first is not None and first.id == sooner.id and first.run_at == sooner.run_at
    assert second is not None and second.id == later.id


def test_stats_leave_out_expired_jobs_before_a_prune(store: RedisStore) -> None:
    record = store.enqueue(make(result_ttl=0.0))
    held = claim(store, "w1", None, 30.0)
    assert held is not None and store.complete(record.id, "w1", None)

    assert store.stats(since=0.0) == store.stats(since=time.time() + 60)
    assert store.stats(since=0.0).counts == {}


# -- Other processes -----------------------------------------------------------------

CLAIMER = """
import json, sys
from flask_afterward.stores.redis import RedisStore
store = RedisStore(sys.argv[1], prefix=sys.argv[2])
store._client.blpop(sys.argv[2] + ":go", timeout=30)
mine, done = [], []
while True:
    completed, claimed = store.complete_and_claim_many(done, sys.argv[3], None, 60.0, 8)
    assert all(completed), completed
    if not claimed:
        break
    mine += [record.id for record in claimed]
    done = [(record.id, "1") for record in claimed]
print(json.dumps(mine))
"""


def test_two_processes_claiming_from_one_redis_get_each_job_exactly_once(
    store: RedisStore,
) -> None:
    # Given 2,000 jobs and two fresh interpreters waiting for one signal,
    ids = {store.enqueue(make()).id for _ in range(2000)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, redis_server.URL, store.prefix, f"p{n}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        for n in range(2)
    ]
    # when both start at once and claim in batches until nothing is left,
    store._client.rpush(f"{store.prefix}:go", "1", "1")
    outputs = [claimer.communicate(timeout=60)[0] for claimer in claimers]

    # then each job went to exactly one of them, both took some, and all succeeded.
    assert [claimer.returncode for claimer in claimers] == [0, 0]
    claimed = [json.loads(output) for output in outputs]
    assert all(claimed), "one process claimed nothing: the test proves nothing"
    every_claim = [job_id for mine in claimed for job_id in mine]
    assert sorted(every_claim) == sorted(ids)
    assert store.stats(since=0.0).counts == {("default", State.SUCCEEDED): 2000}


def test_a_forked_child_opens_its_own_connection(store: RedisStore) -> None:
    parent_id = store._client.client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id and a job it stored
        try:
            record = store.enqueue(make())
            os.write(write, json.dumps([store._client.client_id(), record.id]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as reader:
        child_id, job_id = json.loads(reader.read())
    os.waitpid(pid, 0)

    assert child_id != parent_id
    # The parent's connection was not disturbed, and it sees the child's job.
    assert store._client.client_id() == parent_id
    assert state_of(store, job_id) == State.QUEUED


def state_of(store: RedisStore, job_id: str) -> State | None:
    record = store.get(job_id)
    return None if record is None else record.state


def test_the_store_reconnects_after_redis_restarts() -> None:
    # Given a store on a Redis of its own, with a job in it,
    server = redis_server.RedisServer(redis_server.free_port())
    server.start()
    try:
        opened = RedisStore(f"redis://127.0.0.1:{server.port}/0")
        first = opened.enqueue(make())

        # when that Redis restarts (without persistence: the job is gone),
        server.restart()

        # then the same store works again, scripts and all.
        assert opened.get(first.id) is None
        again = opened.enqueue(make())
        claimed = claim(opened, "w1", None, 30.0)
        assert claimed is not None and claimed.id == again.id
        opened.close()
    finally:
        server.stop()
