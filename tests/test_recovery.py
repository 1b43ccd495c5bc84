"""Durability with real processes: kill -9, SIGTERM, thousands of jobs, bad rows.

Every test runs real ``flask afterward worker`` (and Werkzeug) processes of
``tests.apps.jobs`` on one SQLite file under ``tmp_path``; jobs leave one line per
attempt in files there, so side effects are counted across processes. The test process
enqueues and reads jobs through the same app. Waiting is polling with a deadline; time
bounds are loose (a 2-core CI box runs several of these processes at once).
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import json
import pathlib
import signal
import socket
import time

import pytest
from flask import Flask

from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.records import State
from flask_afterward.records import TERMINAL
from tests.apps import jobs
from tests.apps.jobs_processes import Processes
from tests.apps.jobs_processes import store_url
from tests.apps.jobs_processes import wait_until
from tests.tier2 import store_of

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def app(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> cabc.Iterator[Flask]:
    """The jobs app in this process, on the file the worker processes use."""
    monkeypatch.setenv("JOBS_OUT", str(tmp_path))
    monkeypatch.setenv("JOBS_AFTERWARD_STORE", json.dumps(store_url(tmp_path)))
    app = jobs.create_app()
    yield app
    jobs.afterward.close(app, timeout=5)


def _get(app: Flask, job_id: str) -> JobRecord:
    record = store_of(app).get(job_id)
    assert record is not None
    return record


def _wait_finished(app: Flask, job_id: str, timeout: float = 20.0) -> float:
    """Wait until the job finished; fail, with its error, unless it succeeded."""
    took = wait_until(lambda: _get(app, job_id).state in TERMINAL, timeout, "the job to finish")
    record = _get(app, job_id)
    assert record.state == State.SUCCEEDED, record.error
    return took


def _lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_job_whose_worker_was_killed_runs_again_after_its_lease(
    app: Flask, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Given a worker running a job that hangs on its first attempt,
    first = processes.worker("--threads", "1", AFTERWARD_LEASE=2)
    with app.app_context():
        job_id = jobs.hang_first.delay("killed").id
    out = tmp_path / "killed"
    wait_until(lambda: _lines(out), 15, "the first attempt to start")
    # and an idle second worker, started once the first holds the job,
    second = processes.worker("--threads", "1", AFTERWARD_LEASE=2)
    assert _get(app, job_id).state == State.RUNNING

    # When the first is killed with SIGKILL mid-job,
    first.popen.kill()
    first.wait()
    recovery = _wait_finished(app, job_id)

    # Then the second ran it after the lease ran out, once, and it succeeded.
    record = _get(app, job_id)
    assert record.attempts == 2
    assert _lines(out) == [f"start {first.pid} 1", f"start {second.pid} 2", "done"]
    assert recovery < 10
    print(f"kill -9 recovery: {recovery:.2f} s with AFTERWARD_LEASE=2")


def test_an_after_response_job_survives_a_web_process_killed_after_responding(
    app: Flask, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Given a web process whose single callback thread is held, so the job created
    # during the request is never released by it,
    grace = 1.5
    server = processes.serve(AFTERWARD_DEFER_GRACE=grace, AFTERWARD_CALLBACK_THREADS=1)
    worker = processes.worker("--threads", "1", AFTERWARD_DEFER_GRACE=grace)

    # When a request's response has arrived and the web process is then killed,
    response = _post(server.port, "/signup/ada")
    assert response.startswith(b"HTTP/1.1 200")
    job_id = json.loads(response.partition(b"\r\n\r\n")[2])["id"]
    assert _get(app, job_id).state == State.DEFERRED
    server.popen.kill()
    server.wait()
    killed_at = time.time()

    # Then a worker runs the job, once, after the defer grace.
    _wait_finished(app, job_id)
    record = _get(app, job_id)
    assert _lines(tmp_path / "ada") == [f"{worker.pid} 1"]
    assert record.started_at is not None
    assert record.started_at - record.created_at >= grace
    print(
        f"deferred job released {record.started_at - record.created_at:.2f} s after its "
        f"request, {record.started_at - killed_at:.2f} s after the kill "
        f"(AFTERWARD_DEFER_GRACE={grace})"
    )


def _post(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_four_worker_processes_run_5000_jobs_exactly_once(
    app: Flask, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Given 5,000 queued jobs,
    total = 5000
    started = time.perf_counter()
    with app.app_context():
        for number in range(total):
            jobs.count.delay(number)
    enqueued = time.perf_counter() - started

    # When four worker processes drain them,
    started = time.perf_counter()
    worker = processes.flask(
        "afterward", "worker", "--processes", "4", "--threads", "2", "--burst", AFTERWARD_LEASE=5
    )
    assert worker.wait(120) == 0, worker.log()
    drained = time.perf_counter() - started

    # Then every job ran exactly once, none twice, none missing,
    files = sorted(tmp_path.glob("count-*.txt"))
    runs = collections.Counter(int(line) for path in files for line in _lines(path))
    assert sorted(runs) == list(range(total))
    assert set(runs.values()) == {1}
    # in more than one process, each job on its first attempt: no lease expired.
    assert len(files) >= 2
    store = store_of(app)
    assert store.stats(0).counts == {("default", State.SUCCEEDED): total}
    records = store.list(state=State.SUCCEEDED, limit=total)
    assert {record.attempts for record in records} == {1}
    assert "lost" not in worker.log()
    per_process = [len(_lines(path)) for path in files]
    print(
        f"enqueued {total} in {enqueued:.1f} s; 4 processes drained them in {drained:.1f} s "
        f"(start-up included), per process {per_process}"
    )


def test_sigterm_lets_the_running_job_finish_and_leaves_queued_jobs_queued(
    app: Flask, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Given a one-thread worker running a 1.5 s job, with another job queued behind it,
    worker = processes.worker("--threads", "1", AFTERWARD_SHUTDOWN_TIMEOUT=20)
    with app.app_context():
        running_id = jobs.slow.delay("term", 1.5, 1.5).id
        wait_until(lambda: _lines(tmp_path / "term"), 15, "the job to start")
        queued_id = jobs.record.delay("behind").id

    # When the worker gets SIGTERM,
    worker.popen.send_signal(signal.SIGTERM)

    # Then it finishes the job, exits 0, and the queued job waits for another worker.
    assert worker.wait(20) == 0
    assert "shutting down gracefully… (press Ctrl+C again to force)" in worker.log()
    assert _lines(tmp_path / "term") == ["start", "done"]
    assert _get(app, running_id).state == State.SUCCEEDED
    queued = _get(app, queued_id)
    assert (queued.state, queued.attempts) == (State.QUEUED, 0)
    assert not (tmp_path / "behind").exists()


def test_a_job_longer_than_the_shutdown_timeout_is_requeued_and_finished_after_restart(
    app: Flask, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Given a worker running a job that takes far longer than the shutdown timeout,
    worker = processes.worker("--threads", "1", AFTERWARD_SHUTDOWN_TIMEOUT=0.5)
    with app.app_context():
        job_id = jobs.slow.delay("long", 60, 0.1).id
    wait_until(lambda: _lines(tmp_path / "long"), 15, "the job to start")

    # When the worker gets SIGTERM,
    started = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)

    # Then it exits soon after the timeout, the job back in the queue, attempt given back,
    assert worker.wait(20) == 0
    assert time.monotonic() - started < 10
    record = _get(app, job_id)
    assert (record.state, record.attempts) == (State.QUEUED, 0)
    assert "AFTERWARD_SHUTDOWN_TIMEOUT" in worker.log()
    # and a restarted worker finishes it.
    status, log = processes.run("afterward", "worker", "--burst")
    assert status == 0, log
    assert _get(app, job_id).state == State.SUCCEEDED
    assert _lines(tmp_path / "long") == ["start", "start", "done"]


def test_a_second_sigterm_requeues_the_running_job_at_once(
    app: Flask, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Given a worker shutting down gracefully while a long job runs,
    worker = processes.worker("--threads", "1", AFTERWARD_SHUTDOWN_TIMEOUT=60)
    with app.app_context():
        job_id = jobs.slow.delay("forced", 60, 0.1).id
    wait_until(lambda: _lines(tmp_path / "forced"), 15, "the job to start")
    worker.popen.send_signal(signal.SIGTERM)
    worker.wait_for_log("shutting down gracefully")

    # When a second SIGTERM comes,
    started = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)

    # Then the worker exits at once (status 1) and the job is queued again.
    assert worker.wait(20) == 1
    assert time.monotonic() - started < 10
    record = _get(app, job_id)
    assert (record.state, record.attempts) == (State.QUEUED, 0)


@pytest.mark.parametrize(
    ("task", "payload", "error"),
    [
        (
            "tests.apps.jobs.removed",
            '{"args": [], "kwargs": {}}',
            "no task named 'tests.apps.jobs.removed' is registered",
        ),
        ("tests.apps.jobs.record", '{"args": ["trunc', "its stored arguments cannot be read"),
    ],
    ids=["unknown-task", "corrupt-payload"],
)
def test_a_job_that_cannot_run_fails_clearly_and_the_worker_goes_on(
    app: Flask,
    processes: Processes,
    tmp_path: pathlib.Path,
    task: str,
    payload: str,
    error: str,
) -> None:
    # Given a bad row first in line (its code removed, or its payload corrupted),
    now = time.time()
    bad = JobRecord(
        id=new_job_id(),
        task=task,
        payload=payload,
        state=State.QUEUED,
        created_at=now - 60,
        run_at=now - 60,
    )
    store_of(app).enqueue(bad)
    with app.app_context():
        good_id = jobs.record.delay("next").id

    # When a worker runs,
    status, log = processes.run("afterward", "worker", "--threads", "1", "--burst")

    # Then the bad job failed with an error saying why and what to do,
    assert status == 0, log
    failed = _get(app, bad.id)
    assert failed.state == State.FAILED
    assert failed.error is not None
    assert error in failed.error
    assert "flask afterward retry" in failed.error
    # and the worker went on to the next job.
    assert _get(app, good_id).state == State.SUCCEEDED
    assert len(_lines(tmp_path / "next")) == 1


def test_a_store_file_that_is_not_sqlite_stops_the_worker_at_start(
    processes: Processes, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "jobs.sqlite3").write_bytes(b"not a database, " * 512)

    status, log = processes.run("afterward", "worker", "--burst")

    assert status != 0
    last_line = log.strip().splitlines()[-1]
    assert "AFTERWARD_STORE" in last_line
    assert "not a SQLite database" in last_line
