"""What only the sqlite store has: a file format, URL options, and other processes.

The behaviour every store shares is in ``test_contract.py``. Here: the schema version
and its migrations, refusing files it cannot use, the connection recipe (WAL, the
``synchronous`` level), ``open_store`` URLs, and the promises that involve more than
one process: claims from several processes at once, ``fork()``, and ``kill -9``.
Other processes are fresh interpreters (``subprocess``), never a fork of this one,
except in the test that is about fork.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from flask_afterward import stores as stores_package
from flask_afterward.config import Settings
from flask_afterward.errors import AfterwardError
from flask_afterward.errors import ConfigurationError
from flask_afterward.errors import StoreError
from flask_afterward.records import JobRecord
from flask_afterward.records import State
from flask_afterward.stores import open_store
from flask_afterward.stores import sqlite as sqlite_module
from flask_afterward.stores.memory import MemoryStore
from flask_afterward.stores.sqlite import SCHEMA_VERSION
from flask_afterward.stores.sqlite import SqliteStore
from tests.tier2 import claim

from .test_contract import make


@pytest.fixture
def path(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "jobs.sqlite3")


@pytest.fixture
def store(path: str) -> cabc.Iterator[SqliteStore]:
    opened = SqliteStore(path)
    yield opened
    opened.close()


def pragma(path: str, name: str) -> object:
    """A database-wide PRAGMA, read over a connection of our own."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        connection.close()


def connection_pragma(store: SqliteStore, name: str) -> object:
    """A per-connection PRAGMA, as the store's own connection has it."""
    return store._db.execute(f"PRAGMA {name}").fetchone()[0]


def index_names(path: str) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {name for (name,) in rows}
    finally:
        connection.close()


# -- The file: schema version, migrations, files it refuses --------------------------


def test_a_new_file_carries_the_schema_version(store: SqliteStore, path: str) -> None:
    assert pragma(path, "user_version") == SCHEMA_VERSION


def test_opening_twice_keeps_the_jobs(path: str) -> None:
    first = SqliteStore(path)
    record = first.enqueue(make())
    first.close()

    second = SqliteStore(path)
    try:
        assert second.get(record.id) == record
        assert pragma(path, "user_version") == SCHEMA_VERSION
    finally:
        second.close()


def test_a_version_1_file_is_migrated_and_keeps_its_jobs(path: str) -> None:
    # Given a file as the first release wrote it, with a queued job in it,
    connection = sqlite3.connect(path, isolation_level=None)
    connection.executescript(sqlite_module._SQL["migration_1"] + ";\nPRAGMA user_version = 1;")
    connection.execute(
        "INSERT INTO afterward_jobs (id, task, payload, state, queue, priority, attempts,"
        " max_retries, retry_backoff, result_ttl, created_at, run_at)"
        " VALUES ('old', 'tests.add', '{}', 'queued', 'default', 0, 0, 0, 1.0, 60.0, 1.0, 1.0)"
    )
    connection.close()

    # when the store opens it,
    store = SqliteStore(path)
    try:
        # then it is at the current version, with the job intact and claimable.
        assert pragma(path, "user_version") == SCHEMA_VERSION
        record = store.get("old")
        assert record is not None
        assert (record.state, record.secrets) == (State.QUEUED, None)
        claimed = claim(store, "w1", None, 30.0)
        assert claimed is not None and claimed.id == "old"
    finally:
        store.close()
    indexes = index_names(path)
    assert {"afterward_jobs_deferred", "afterward_jobs_running"} <= indexes
    assert not {"afterward_jobs_state", "afterward_jobs_created"} & indexes


def test_a_file_from_a_newer_version_is_refused(path: str) -> None:
    SqliteStore(path).close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()

    with pytest.raises(ConfigurationError, match=r"schema version \d+, newer than"):
        SqliteStore(path)
    assert pragma(path, "user_version") == SCHEMA_VERSION + 1  # left as it was


def test_a_file_that_is_not_sqlite_is_refused_at_open(path: str) -> None:
    content = b"These are the minutes of the meeting, not a database.\n" * 20
    pathlib.Path(path).write_bytes(content)

    with pytest.raises(ConfigurationError, match="which is not a SQLite database") as info:
        SqliteStore(path)

    assert path in str(info.value)
    assert pathlib.Path(path).read_bytes() == content  # and it is not touched


def test_a_missing_folder_is_created_with_the_lock_file_in_it(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A new app's instance folder does not exist yet when the store first opens.
    path = tmp_path / "a" / "b" / "jobs.sqlite3"

    store = SqliteStore(str(path))
    try:
        assert store._local.write_lock.fd is not None  # writers queue on the lock file
        store.enqueue(make())
    finally:
        store.close()

    assert path.is_file()
    assert pathlib.Path(str(path) + sqlite_module.LOCK_SUFFIX).is_file()
    assert "lock file" not in caplog.text


@pytest.mark.parametrize("query", ["insert", "insert_plain"])
def test_both_inserts_store_every_field_of_a_record(
    monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    # The inserts are generated from JobRecord's fields, not listed by hand: a field
    # added to JobRecord (here a pretend one) reaches them without editing the SQL,
    fields = (*(field.name for field in dataclasses.fields(JobRecord)), "flavour")
    monkeypatch.setattr(sqlite_module, "_FIELDS", fields)
    monkeypatch.setattr(sqlite_module, "_COLUMNS", ", ".join(fields))
    sql = sqlite_module._load_queries()[query]

    # with every field named once, in order, then expires_at, and one parameter each
    named = re.search(r"INSERT (?:OR IGNORE )?INTO afterward_jobs \(([^)]*)\)", sql)
    assert named is not None, sql
    assert [column.strip() for column in named[1].split(",")] == [*fields, "expires_at"]
    assert sql.count("?") == len(fields) + 1 + (query == "insert")  # + the unique key


def test_a_unique_insert_refused_each_try_raises_a_store_error(store: SqliteStore) -> None:
    # Given a finished job with a unique key (as eager mode stores it)
    record = make(state=State.SUCCEEDED, unique_key="report:7", finished_at=time.time())
    assert store.enqueue(record) == record

    # When the same record is enqueued again: its id is taken, and no active job
    # holds its key, so each try finds no holder to return and tries again
    with pytest.raises(StoreError, match="Could not store job .* 'report:7'.*stored already"):
        store.enqueue(record)

    # Then the error is one of ours, catchable by its natural type too, and the stored
    # job is untouched
    assert issubclass(StoreError, AfterwardError)
    assert issubclass(StoreError, RuntimeError)
    assert store.get(record.id) == record


# -- The connection recipe -----------------------------------------------------------


def test_wal_mode_and_synchronous_normal_by_default(store: SqliteStore, path: str) -> None:
    assert pragma(path, "journal_mode") == "wal"
    assert connection_pragma(store, "synchronous") == 1  # NORMAL


def test_synchronous_full_on_request(path: str) -> None:
    store = SqliteStore(path, synchronous="full")
    try:
        assert connection_pragma(store, "synchronous") == 2  # FULL
    finally:
        store.close()


@pytest.mark.parametrize("level", ["EXTRA", "OFF", "extra", "fast", ""])
def test_synchronous_accepts_only_what_its_messages_promise(
    tmp_path: pathlib.Path, level: str
) -> None:
    # Given a level SQLite knows (EXTRA, OFF) or not, which the store does not promise
    url = f"sqlite:///{tmp_path}/jobs.sqlite3?synchronous={level}"

    # Then the URL and the constructor refuse it, naming the key, the value and the
    # levels accepted, with the same words the unknown-option message uses
    accepted = stores_package._SQLITE_OPTIONS["synchronous"]
    expected = f"AFTERWARD_STORE option synchronous={level!r} is not valid: expected {accepted}"
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        open_store(Settings(store=url), instance_path=str(tmp_path))
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        SqliteStore(str(tmp_path / "direct.sqlite3"), synchronous=level)
    assert not list(tmp_path.iterdir())  # refused before any file was made


def test_every_thread_gets_a_connection_with_the_recipe(store: SqliteStore) -> None:
    seen: list[object] = []
    thread = threading.Thread(
        target=lambda: seen.extend(
            [store._db, connection_pragma(store, "synchronous"), store.enqueue(make()).id]
        )
    )
    thread.start()
    thread.join(timeout=10)

    assert seen[0] is not store._db
    assert seen[1] == 1
    assert store.get(str(seen[2])) is not None


def test_checkpoints_are_rarer_at_normal_than_at_full(store: SqliteStore, path: str) -> None:
    assert connection_pragma(store, "wal_autocheckpoint") == sqlite_module.NORMAL_CHECKPOINT_PAGES
    full = SqliteStore(path, synchronous="FULL")
    try:
        assert connection_pragma(full, "wal_autocheckpoint") == 1000  # SQLite's default
    finally:
        full.close()


def test_at_full_every_commit_syncs_batches_included(path: str) -> None:
    # FULL means every commit waits for the disk: batches share one commit (one sync)
    # between many state changes, but no commit ever skips its sync.
    store = SqliteStore(path, synchronous="FULL")
    statements: list[str] = []
    try:
        for _ in range(3):
            store.enqueue(make())
        store._db.set_trace_callback(statements.append)
        claimed = claim(store, "w1", None, 30.0)
        assert claimed is not None
        done, more = store.complete_and_claim_many([(claimed.id, None)], "w1", None, 30.0, 8)
        assert done == [True] and len(more) == 2
        store.complete_and_claim_many([(job.id, None) for job in more], "w1", None, 30.0, 8)

        assert not [sql for sql in statements if "synchronous" in sql.lower()]
        assert connection_pragma(store, "synchronous") == 2  # FULL
        assert store.stats(since=0.0).counts[("default", State.SUCCEEDED)] == 3
    finally:
        store.close()


def test_a_new_file_uses_the_store_page_size(store: SqliteStore, path: str) -> None:
    assert pragma(path, "page_size") == sqlite_module.PAGE_SIZE


def assert_a_new_store_works(path: str) -> None:
    """Open a store on ``path``, write a job and read it back."""
    store = SqliteStore(path)
    try:
        record = store.enqueue(make())
        assert store.get(record.id) == record
    finally:
        store.close()


def test_an_existing_file_keeps_its_page_size(path: str) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA page_size = 4096")
    connection.execute("CREATE TABLE other (x)")
    connection.close()

    assert_a_new_store_works(path)
    assert pragma(path, "page_size") == 4096


def test_claim_recovers_at_most_once_per_interval(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = {"state": State.DEFERRED, "run_at": time.time() - store.defer_grace - 1}
    monkeypatch.setattr(sqlite_module, "RECOVERY_INTERVAL", 3600.0)
    assert claim(store, "w1", None, 30.0) is None  # the first claim recovers
    first = store.enqueue(make(**stale))

    assert claim(store, "w1", None, 30.0) is None  # not again within the interval

    monkeypatch.setattr(sqlite_module, "RECOVERY_INTERVAL", 0.0)
    store._next_recovery = 0.0
    claimed = claim(store, "w1", None, 30.0)
    assert claimed is not None and claimed.id == first.id


# -- open_store: URLs ----------------------------------------------------------------


def test_an_absolute_url_opens_that_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "elsewhere" / "jobs.sqlite3"

    store = open_store(Settings(store=f"sqlite:///{path}"), instance_path="/nonexistent")
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == str(path)
        assert connection_pragma(store, "synchronous") == 1
    finally:
        store.close()
    assert path.is_file()


def test_a_relative_url_is_under_the_instance_path(tmp_path: pathlib.Path) -> None:
    instance = tmp_path / "instance"

    store = open_store(Settings(store="sqlite:///jobs/a.sqlite3"), instance_path=str(instance))
    store.close()

    assert isinstance(store, SqliteStore)
    assert store.path == str(instance / "jobs" / "a.sqlite3")
    assert (instance / "jobs" / "a.sqlite3").is_file()


def test_url_options_set_synchronous_and_timeout(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.sqlite3?synchronous=FULL&timeout=2.5"

    store = open_store(Settings(store=url), instance_path=str(tmp_path))
    try:
        assert isinstance(store, SqliteStore)
        assert connection_pragma(store, "synchronous") == 2
        assert connection_pragma(store, "busy_timeout") == 2500
    finally:
        store.close()


def test_memory_url_opens_a_memory_store(tmp_path: pathlib.Path) -> None:
    settings = Settings(store="memory://", defer_grace=5.0)

    store = open_store(settings, instance_path=str(tmp_path))

    assert isinstance(store, MemoryStore)
    assert store.defer_grace == 5.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///jobs.sqlite3?journal=DELETE", r"unknown options \['journal'\]"),
        ("sqlite:///jobs.sqlite3?synchronous=FULL&Timeout=3", r"unknown options \['Timeout'\]"),
        ("sqlite:///jobs.sqlite3?synchronous=FAST", "synchronous='FAST'"),
        ("sqlite:///jobs.sqlite3?timeout=soon", "timeout='soon' is not valid"),
        ("sqlite:///jobs.sqlite3?timeout=-1", "timeout='-1' is not valid"),
        ("sqlite:///", "names no file"),
        ("sqlite://jobs.sqlite3", "names no file"),
        ("memory://?size=10", r"unknown options \['size'\]: the memory store takes no"),
        ("postgres://db/jobs", "unknown scheme 'postgres'.*sqlite://, memory://"),
        ("/var/jobs.sqlite3", "unknown scheme ''"),
    ],
)
def test_bad_urls_are_refused_with_what_to_do(
    tmp_path: pathlib.Path, url: str, message: str
) -> None:
    instance = tmp_path / "instance"

    with pytest.raises(ConfigurationError, match=message):
        open_store(Settings(store=url), instance_path=str(instance))

    assert not instance.exists()  # refused before any file was made


# -- Several processes ---------------------------------------------------------------

#: Run by each claiming process: open the store, wait for "go", claim and complete
#: until nothing is left (one by one, or in batches), then write the ids it claimed,
#: one a line.
CLAIMER = """
import sys
import time
from flask_afterward.stores.sqlite import SqliteStore

path, out, worker, mode, synchronous = sys.argv[1:]
store = SqliteStore(path, synchronous=synchronous)
print("ready", flush=True)
sys.stdin.readline()
claimed = []
if mode == "one":
    while claimed_now := store.complete_and_claim_many([], worker, None, 300.0, 1)[1]:
        record = claimed_now[0]
        if not store.complete(record.id, worker, None):
            raise SystemExit(f"{worker} lost job {record.id} it had just claimed")
        claimed.append(record.id)
else:  # batches of up to 8, each recorded with the next claim, as a busy Worker does
    done = []
    while True:
        completed, records = store.complete_and_claim_many(done, worker, None, 300.0, 8)
        if not all(completed):
            raise SystemExit(f"{worker} lost a job of {done} it had claimed")
        if not records:
            break
        claimed += [record.id for record in records]
        done = [(record.id, None) for record in records]
        # Run the batch: a worker holds no lock meanwhile. Without this the first to
        # claim can re-take the lock file before a waiting process is scheduled (flock
        # is not fair), and drain the queue alone: then the test shows no contention.
        time.sleep(0.001)
store.close()
with open(out, "w") as file:
    file.write("\\n".join(claimed))
"""


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_ready(processes: list[subprocess.Popen[str]]) -> None:
    """Wait for each process to print "ready" (or fail with what it printed instead)."""
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == "ready\n", line or process.communicate(timeout=10)[1]


@pytest.mark.parametrize(
    ("mode", "synchronous"), [("one", "NORMAL"), ("batch", "NORMAL"), ("batch", "FULL")]
)
def test_processes_claiming_from_one_file_get_each_job_exactly_once(
    store: SqliteStore, path: str, tmp_path: pathlib.Path, mode: str, synchronous: str
) -> None:
    # Given 2,000 queued jobs and 4 worker processes, each ready on the same file,
    ids = {store.enqueue(make()).id for _ in range(2000)}
    outs = [tmp_path / f"claimed-{n}.txt" for n in range(4)]
    processes = [
        spawn(CLAIMER, path, str(out), f"p{n}", mode, synchronous) for n, out in enumerate(outs)
    ]
    try:
        wait_until_ready(processes)

        # when they are all told to go at once,
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.close()
        # (Each prints nothing more, so reading stderr to its end cannot block on a
        # full stdout pipe; the pytest timeout bounds a hang.)
        errors = []
        for process in processes:
            assert process.stderr is not None
            errors.append(process.stderr.read())
        for process in processes:
            process.wait(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()

    # then none failed (no "database is locked"), and every job was claimed by
    # exactly one of them.
    assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
    assert errors == ["", "", "", ""]
    claimed = [out.read_text().split() for out in outs]
    every_claim = [job_id for mine in claimed for job_id in mine]
    assert len(every_claim) == len(ids)
    assert set(every_claim) == ids
    assert sum(1 for mine in claimed if mine) >= 2, "the processes did not contend"
    assert store.stats(since=0.0).counts == {("default", State.SUCCEEDED): 2000}


#: Run by each opening process: wait for "go", then open the store and enqueue a job.
OPENER = """
import sys
from flask_afterward.records import JobRecord
from flask_afterward.records import JobRecord
from flask_afterward.records import State
from flask_afterward.records import new_job_id
from flask_afterward.stores.sqlite import SqliteStore

print("ready", flush=True)
sys.stdin.readline()
store = SqliteStore(sys.argv[1])
store.enqueue(JobRecord(id=new_job_id(), task="t", payload="{}", state=State.QUEUED))
store.close()
"""


def test_processes_opening_a_new_file_at_once_all_get_a_working_store(
    tmp_path: pathlib.Path,
) -> None:
    # Given 8 processes about to open the same file, which does not exist yet,
    path = str(tmp_path / "new.sqlite3")
    processes = [spawn(OPENER, path) for _ in range(8)]
    try:
        wait_until_ready(processes)
        # when they are told to go at once (SQLite alone refuses, without waiting,
        # when two of them switch the new file to WAL at the same moment),
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    # then every one of them stored its job.
    assert [process.returncode for process in processes] == [0] * 8, results
    store = SqliteStore(path)
    try:
        assert len(store.list(limit=100)) == 8
    finally:
        store.close()
    assert os.path.exists(path + sqlite_module.LOCK_SUFFIX)


#: Holds the store's lock file, says so, then waits to be killed.
LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_process_killed_holding_the_lock_file_does_not_block_the_others(path: str) -> None:
    # Given a process that holds the lock file,
    holder = spawn(LOCK_HOLDER, path + sqlite_module.LOCK_SUFFIX)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n", holder.communicate(timeout=10)[1]
        # when it is killed with no chance to clean up,
        holder.kill()
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()

    # then the kernel released its lock: the store opens and works.
    assert_a_new_store_works(path)


#: Holds the lock file for a write while it forks; the child lives on, the parent is
#: then killed, still inside the write.
FORKER = """
import os, sys
from flask_afterward.stores.sqlite import SqliteStore

store = SqliteStore(sys.argv[1])
store._db
with store._writing:
    pid = os.fork()
    if pid == 0:
        sys.stdin.readline()
        os._exit(0)
    print(pid, flush=True)
    sys.stdin.readline()
"""


def test_a_child_forked_during_a_write_does_not_keep_the_lock_when_its_parent_dies(
    store: SqliteStore, path: str
) -> None:
    # Given a process killed while writing, whose forked child is still alive,
    parent = spawn(FORKER, path)
    child = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), line or parent.communicate(timeout=10)[1]
        child = int(line)
        parent.kill()
        parent.wait(timeout=10)

        # when another process writes,
        written = threading.Event()
        thread = threading.Thread(target=lambda: (store.enqueue(make()), written.set()))
        thread.daemon = True  # if the lock were still held, it would wait for the child
        thread.start()

        # then it does not wait for the child: the child closed what it inherited.
        assert written.wait(10)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.communicate()
        if child:
            os.kill(child, signal.SIGKILL)


def test_writers_in_two_processes_take_turns_on_the_lock_file(
    store: SqliteStore, path: str, tmp_path: pathlib.Path
) -> None:
    # (The lock file is held around each write: two processes enqueueing and claiming
    # at once lose nothing and never fail with "database is locked".)
    ids = {store.enqueue(make()).id for _ in range(500)}
    out = tmp_path / "claimed.txt"
    claimer = spawn(CLAIMER, path, str(out), "p1", "batch", "NORMAL")
    try:
        assert claimer.stdout is not None and claimer.stdin is not None
        assert claimer.stdout.readline() == "ready\n", claimer.communicate(timeout=10)[1]
        claimer.stdin.write("go\n")
        claimer.stdin.flush()
        more = {store.enqueue(make()).id for _ in range(500)}
        _, errors = claimer.communicate(timeout=60)
    finally:
        if claimer.poll() is None:
            claimer.kill()
            claimer.communicate()
    assert claimer.returncode == 0, errors
    claimed = out.read_text().split()
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= ids | more
    # What it did not get is still queued, nothing else is missing.
    assert {r.id for r in store.list(state=State.QUEUED, limit=2000)} == (ids | more) - set(claimed)


def test_a_deleted_lock_file_is_made_again_by_the_next_connection(store: SqliteStore) -> None:
    os.remove(store.lock_path)

    thread = threading.Thread(target=lambda: store.enqueue(make()))  # a new connection
    thread.start()
    thread.join(timeout=10)

    assert os.path.exists(store.lock_path)
    assert len(store.list()) == 1


#: Run by the process that gets killed: enqueue, claim one job, then hang.
VICTIM = """
import sys
from flask_afterward.records import JobRecord
from flask_afterward.records import JobRecord
from flask_afterward.records import State
from flask_afterward.records import new_job_id
from flask_afterward.stores.sqlite import SqliteStore

store = SqliteStore(sys.argv[1])
for n in range(50):
    store.enqueue(JobRecord(id=f"job-{n:02}", task="t", payload="{}", state=State.QUEUED))
claimed = store.complete_and_claim_many([], "victim", None, 0.0, 1)[1][0]
print(claimed.id, flush=True)
sys.stdin.readline()
"""


def test_kill_9_loses_no_committed_job_and_its_claim_is_recovered(
    store: SqliteStore, path: str
) -> None:
    # Given a process that enqueued 50 jobs and is running one of them,
    victim = spawn(VICTIM, path)
    try:
        assert victim.stdout is not None
        running_id = victim.stdout.readline().strip()
        assert running_id.startswith("job-"), victim.communicate(timeout=10)[1]

        # when it is killed with no chance to clean up,
        victim.kill()
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        for stream in (victim.stdin, victim.stdout, victim.stderr):
            if stream is not None:
                stream.close()

    # then every job it committed is there,
    assert len(store.list(limit=100)) == 50
    assert store.list(state=State.RUNNING)[0].worker == "victim"
    # and once its lease is over, the job it was running runs again elsewhere.
    store.recover(time.time())
    seen = {}
    while (record := claim(store, "survivor", None, 30.0)) is not None:
        seen[record.id] = record.attempts
    assert len(seen) == 50
    assert seen[running_id] == 2


def test_a_forked_child_gets_its_own_connection_and_the_parent_keeps_its(
    store: SqliteStore,
) -> None:
    # Given a store in use in this process,
    before = store.enqueue(make())
    parent_connection = store._db
    read_end, write_end = os.pipe()

    # when the process forks and the child uses the same store object,
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any cleanup
        code = 1
        try:
            os.close(read_end)
            is_new = store._db is not parent_connection
            is_readable = store.get(before.id) == before
            made = store.enqueue(make(task="tests.from_child"))
            os.write(write_end, f"{is_new} {is_readable} {made.id}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)

    # then the child had a connection of its own and could read and write,
    assert os.waitstatus_to_exitcode(status) == 0
    is_new, is_readable, child_job = report.split()
    assert (is_new, is_readable) == ("True", "True")
    # and the parent's connection still works, and sees the child's job.
    assert store._db is parent_connection
    assert store.get(child_job) is not None
    after = store.enqueue(make())
    claimed = set()
    while (record := claim(store, "w1", None, 30.0)) is not None:
        claimed.add(record.id)
    assert claimed == {before.id, child_job, after.id}
