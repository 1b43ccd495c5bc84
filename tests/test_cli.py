"""``flask afterward …``: every command, through Flask's CLI runner or a real process.

The app is ``tests.apps.jobs`` on a SQLite file under ``tmp_path``. Jobs in a given
state are made with the store directly, so each test says exactly what it starts from.
Commands that must run as their own process (signals, ``--processes``) start real
``flask`` processes (``tests.apps.jobs_processes``); everything is stopped at the end.
"""

from __future__ import annotations

import collections.abc as cabc
import datetime
import json
import os
import pathlib
import signal
import threading
import time
import typing as t

import pytest
from click.testing import Result
from flask import Flask

from flask_afterward.config import EXTENSION_KEY
from flask_afterward.records import JobRecord
from flask_afterward.records import new_job_id
from flask_afterward.records import State
from flask_afterward.supervisor import MIN_UPTIME
from tests.apps import jobs
from tests.apps.jobs_processes import children_of
from tests.apps.jobs_processes import Processes
from tests.apps.jobs_processes import store_url
from tests.apps.jobs_processes import wait_until
from tests.tier2 import claim
from tests.tier2 import store_of

Cli = cabc.Callable[..., Result]


@pytest.fixture
def make_app(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> cabc.Iterator[cabc.Callable[..., Flask]]:
    """``make_app(AFTERWARD_WORKERS=2)``: the jobs app with extra settings; closed after."""
    monkeypatch.setenv("JOBS_OUT", str(tmp_path))
    monkeypatch.setenv("JOBS_AFTERWARD_STORE", json.dumps(store_url(tmp_path)))
    made: list[Flask] = []

    def make(**config: object) -> Flask:
        for key, value in config.items():
            monkeypatch.setenv(f"JOBS_{key}", json.dumps(value))
        made.append(jobs.create_app())
        return made[-1]

    yield make
    for app in made:
        jobs.afterward.close(app, timeout=5)


@pytest.fixture
def app(make_app: cabc.Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def cli(app: Flask) -> Cli:
    """``cli("jobs", "--state", "failed")`` runs ``flask afterward jobs --state failed``."""
    runner = app.test_cli_runner()

    def invoke(*args: str) -> Result:
        return runner.invoke(args=["afterward", *args])

    return invoke


def _add(app: Flask, state: State = State.QUEUED, **fields: t.Any) -> JobRecord:
    """Store a job in ``state``; a finished one finished a second ago."""
    now = time.time()
    values: dict[str, t.Any] = {
        "id": new_job_id(),
        "task": jobs.record.name,
        "payload": '{"args": ["x"], "kwargs": {}}',
        "state": state,
        "created_at": now,
        "run_at": now,
    }
    if state in (State.SUCCEEDED, State.FAILED, State.CANCELLED):
        values.update(finished_at=now - 1, attempts=1)
    values.update(fields)
    return store_of(app).enqueue(JobRecord(**values))


def _get(app: Flask, job_id: str) -> JobRecord:
    record = store_of(app).get(job_id)
    assert record is not None
    return record


def _worker_threads() -> set[threading.Thread]:
    """Live job-running threads of any worker group in this process (other tests' too:
    compare with a snapshot)."""
    return {
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("flask-afterward-worker-")
        and not thread.name.endswith("-monitor")
    }


# jobs


def test_jobs_lists_jobs_newest_first_with_their_columns(app: Flask, cli: Cli) -> None:
    older = _add(app, created_at=time.time() - 60, queue="mail")
    newer = _add(app, State.RUNNING, progress=0.5, attempts=1)

    result = cli("jobs")

    assert result.exit_code == 0, result.output
    header, first, second = result.output.splitlines()
    assert header.split() == [
        "ID", "TASK", "STATE", "QUEUE", "ATTEMPTS", "PROGRESS", "CREATED", "(UTC)"
    ]  # fmt: skip
    assert first.split()[:6] == [newer.id, jobs.record.name, "running", "default", "1", "50%"]
    assert second.split()[:6] == [older.id, jobs.record.name, "queued", "mail", "0", "-"]


def test_jobs_filters_by_state_task_and_queue_and_stops_at_the_limit(app: Flask, cli: Cli) -> None:
    failed = _add(app, State.FAILED)
    mail = _add(app, queue="mail")
    slow = _add(app, task=jobs.slow.name)
    plain = _add(app)

    assert _ids(cli("jobs", "--state", "failed")) == [failed.id]
    assert _ids(cli("jobs", "--queue", "mail")) == [mail.id]
    assert _ids(cli("jobs", "--task", jobs.slow.name)) == [slow.id]
    assert _ids(cli("jobs", "--limit", "2")) == [plain.id, slow.id]


def _ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.output.splitlines()[1:]]


def test_jobs_says_so_when_no_job_matches(app: Flask, cli: Cli) -> None:
    _add(app)

    result = cli("jobs", "--state", "failed")

    assert result.exit_code == 0
    assert result.output == "No jobs match.\n"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--state", "done"], "'done' is not one of 'deferred', 'queued', 'running'"),
        (["--limit", "0"], "0 is not in the range x>=1"),
    ],
)
def test_jobs_refuses_bad_options_saying_what_is_accepted(
    cli: Cli, args: list[str], complaint: str
) -> None:
    result = cli("jobs", *args)

    assert result.exit_code == 2
    assert complaint in result.output


# show


def test_show_prints_every_field_and_the_result(app: Flask, cli: Cli) -> None:
    record = _add(app, State.SUCCEEDED, result='"x"', queue="mail", result_ttl=3600)

    result = cli("show", record.id)

    assert result.exit_code == 0, result.output
    fields = dict(line.split(None, 1) for line in result.output.splitlines())
    assert fields["id"] == record.id
    assert fields["task"] == jobs.record.name
    assert fields["state"] == "succeeded"
    assert fields["queue"] == "mail"
    assert fields["payload"] == record.payload
    assert fields["result"] == '"x"'
    assert fields["worker"] == "-"
    assert fields["started_at"] == "-"
    assert record.finished_at is not None
    finished = datetime.datetime.fromtimestamp(record.finished_at, datetime.UTC)
    assert fields["finished_at"] == finished.strftime("%Y-%m-%d %H:%M:%S")
    expires = finished + datetime.timedelta(hours=1)
    assert fields["expires_at"] == expires.strftime("%Y-%m-%d %H:%M:%S")
    assert "error:" not in result.output


def test_show_never_prints_the_secrets_stored_with_a_job(app: Flask, cli: Cli) -> None:
    record = _add(app, secrets='{"Cookie": "session=hunter2"}')

    result = cli("show", record.id)

    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert " ".join(result.output.split()).count("secrets (stored, not shown)") == 1


def test_show_prints_the_error_of_a_failed_job_with_its_traceback(app: Flask, cli: Cli) -> None:
    with app.app_context():
        job = jobs.fail.delay("disk full")
    assert cli("worker", "--burst", "--threads", "1").exit_code == 0

    result = cli("show", job.id)

    assert result.exit_code == 0, result.output
    assert "\nstate " in result.output
    assert result.output.split("\nstate ", 1)[1].split()[0] == "failed"
    error = result.output.split("error:\n", 1)[1]
    assert error.startswith("RuntimeError: disk full\nTraceback (most recent call last):")
    assert "raise RuntimeError(message)" in error


def test_show_of_an_unknown_id_fails_and_says_how_to_find_one(cli: Cli) -> None:
    result = cli("show", "no-such-job")

    assert result.exit_code == 1
    assert "No job has the id 'no-such-job'" in result.output
    assert "flask afterward jobs" in result.output


@pytest.mark.parametrize(
    ("command", "state"),
    [("show", State.QUEUED), ("retry", State.FAILED), ("cancel", State.QUEUED)],
)
def test_a_job_id_that_starts_with_a_dash_is_taken_as_an_id(
    app: Flask, cli: Cli, command: str, state: State
) -> None:
    # One id in 64 starts with "-" (URL-safe base64): not an unknown option.
    record = _add(app, state, id="-" + new_job_id()[1:])

    result = cli(command, record.id)

    assert result.exit_code == 0, result.output
    assert record.id in result.output
    assert _get(app, record.id).state != state or command == "show"


# retry


def test_retry_queues_a_failed_job_again_as_new(app: Flask, cli: Cli) -> None:
    record = _add(app, State.FAILED, error="RuntimeError: boom\n")

    result = cli("retry", record.id)

    assert result.exit_code == 0, result.output
    assert result.output == f"Queued job {record.id} again.\n"
    again = _get(app, record.id)
    assert (again.state, again.attempts, again.error) == (State.QUEUED, 0, None)


@pytest.mark.parametrize("state", [State.SUCCEEDED, State.QUEUED, State.RUNNING])
def test_retry_refuses_a_job_that_did_not_fail(app: Flask, cli: Cli, state: State) -> None:
    record = _add(app, state)

    result = cli("retry", record.id)

    assert result.exit_code == 1
    assert f"Job {record.id} is {state}; only failed or cancelled jobs" in result.output
    assert _get(app, record.id).state == state


def test_retry_of_an_unknown_id_fails(cli: Cli) -> None:
    result = cli("retry", "no-such-job")

    assert result.exit_code == 1
    assert "No job has the id 'no-such-job'" in result.output


def test_retry_failed_queues_every_failed_job_and_nothing_else(app: Flask, cli: Cli) -> None:
    failed = [_add(app, State.FAILED) for _ in range(3)]
    cancelled = _add(app, State.CANCELLED)

    result = cli("retry", "--failed")

    assert result.exit_code == 0, result.output
    assert result.output == "Queued 3 failed jobs again.\n"
    assert {_get(app, record.id).state for record in failed} == {State.QUEUED}
    assert _get(app, cancelled.id).state == State.CANCELLED


def test_retry_failed_skips_a_job_whose_unique_key_is_taken(app: Flask, cli: Cli) -> None:
    blocked = _add(app, State.FAILED, unique_key="sync:ada")
    _add(app, unique_key="sync:ada")  # a newer job holds the key now
    free = _add(app, State.FAILED)

    result = cli("retry", "--failed")

    assert result.output == "Queued 1 failed jobs again.\n"
    assert (_get(app, blocked.id).state, _get(app, free.id).state) == (State.FAILED, State.QUEUED)
    single = cli("retry", blocked.id)
    assert single.exit_code == 1
    assert "an active job holds its unique key 'sync:ada'" in single.output


@pytest.mark.parametrize("args", [[], ["some-id", "--failed"]], ids=["neither", "both"])
def test_retry_needs_a_job_id_or_failed_but_not_both(cli: Cli, args: list[str]) -> None:
    result = cli("retry", *args)

    assert result.exit_code == 2
    assert "Give either a job ID or --failed." in result.output


# cancel


def test_cancel_cancels_a_queued_job(app: Flask, cli: Cli) -> None:
    record = _add(app)

    result = cli("cancel", record.id)

    assert result.exit_code == 0, result.output
    assert result.output == f"Cancelled job {record.id}.\n"
    assert _get(app, record.id).state == State.CANCELLED


def test_cancel_asks_a_running_job_to_stop(app: Flask, cli: Cli) -> None:
    record = _add(app)
    assert claim(store_of(app), "a-worker", None, 60) is not None

    result = cli("cancel", record.id)

    assert result.exit_code == 0, result.output
    assert "stops at its next progress() call" in result.output
    assert _get(app, record.id).is_cancel_requested


def test_cancel_refuses_a_finished_or_unknown_job(app: Flask, cli: Cli) -> None:
    record = _add(app, State.SUCCEEDED)

    finished = cli("cancel", record.id)
    unknown = cli("cancel", "no-such-job")

    assert finished.exit_code == 1
    assert f"Job {record.id} already finished (succeeded)." in finished.output
    assert unknown.exit_code == 1
    assert "No job has the id 'no-such-job'" in unknown.output


# prune and stats


def test_prune_deletes_finished_jobs_past_their_ttl_and_says_how_many(app: Flask, cli: Cli) -> None:
    expired = [_add(app, State.SUCCEEDED, result_ttl=0.5) for _ in range(2)]
    kept = _add(app, State.SUCCEEDED, result_ttl=3600)
    queued = _add(app)

    result = cli("prune")

    assert result.exit_code == 0, result.output
    assert result.output == "Pruned 2 finished jobs.\n"
    assert [store_of(app).get(record.id) for record in expired] == [None, None]
    assert store_of(app).get(kept.id) is not None
    assert store_of(app).get(queued.id) is not None


def test_stats_counts_jobs_per_queue_and_state_and_the_throughput(app: Flask, cli: Cli) -> None:
    for _ in range(3):
        _add(app, State.SUCCEEDED)
    _add(app, State.FAILED, queue="mail")
    _add(app, State.SUCCEEDED, finished_at=time.time() - 3600)  # outside the window
    _add(app, queue="mail")

    result = cli("stats", "--minutes", "2")

    assert result.exit_code == 0, result.output
    header, default, mail, total, summary = result.output.splitlines()
    assert header.split() == [
        "QUEUE", "deferred", "queued", "running", "succeeded", "failed", "cancelled", "TOTAL"
    ]  # fmt: skip
    assert default.split() == ["default", "0", "0", "0", "4", "0", "0", "4"]
    assert mail.split() == ["mail", "0", "1", "0", "0", "1", "0", "2"]
    assert total.split() == ["(all)", "0", "1", "0", "4", "1", "0", "6"]
    assert summary == (
        "Finished in the last 2 min: 4 (3 succeeded, 1 failed, 0 cancelled); "
        "throughput 2.0 jobs/min."
    )


def test_stats_refuses_an_empty_window(cli: Cli) -> None:
    result = cli("stats", "--minutes", "0")

    assert result.exit_code == 2
    assert "--minutes" in result.output


# worker, in this process


def test_worker_burst_runs_the_queued_jobs_then_exits(
    app: Flask, cli: Cli, tmp_path: pathlib.Path
) -> None:
    with app.app_context():
        ids = [jobs.record.delay(name).id for name in ("a", "b", "c")]

    result = cli("worker", "--burst", "--threads", "2")

    assert result.exit_code == 0, result.output
    assert {_get(app, job_id).state for job_id in ids} == {State.SUCCEEDED}
    assert all((tmp_path / name).exists() for name in ("a", "b", "c"))


def test_worker_takes_jobs_only_from_the_queues_given(app: Flask, cli: Cli) -> None:
    with app.app_context():
        mail = jobs.record.options(queue="mail").delay("m").id
        sms = jobs.record.options(queue="sms").delay("s").id
        other = jobs.record.delay("o").id

    result = cli("worker", "--burst", "--queue", "mail", "--queue", "sms")

    assert result.exit_code == 0, result.output
    assert [_get(app, i).state for i in (mail, sms, other)] == [
        State.SUCCEEDED,
        State.SUCCEEDED,
        State.QUEUED,
    ]


def test_worker_runs_jobs_made_by_jobs_in_its_own_threads(
    make_app: cabc.Callable[..., Flask],
) -> None:
    # Given an app whose processes run two worker threads each (AFTERWARD_WORKERS),
    # and a job that enqueues jobs, which wakes "this process's workers",
    app = make_app(AFTERWARD_WORKERS=2)
    parent = _add(app, task=jobs.fan_out.name, payload='{"args": [["x", "y"]], "kwargs": {}}').id
    before = _worker_threads()

    # When a one-thread worker runs it,
    result = app.test_cli_runner().invoke(args=["afterward", "worker", "--burst", "--threads", "1"])

    # Then its own thread ran the children too, and no AFTERWARD_WORKERS group started.
    assert result.exit_code == 0, result.output
    assert _get(app, parent).state == State.SUCCEEDED
    children = store_of(app).list(task=jobs.record.name)
    assert [record.state for record in children] == [State.SUCCEEDED] * 2
    assert not _worker_threads() - before


def test_worker_refuses_a_store_whose_engine_runs_its_jobs(
    app: Flask, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    class EngineStore:  # a Store without claim(): its engine's workers run its jobs
        def close(self) -> None: ...

    monkeypatch.setattr(app.extensions[EXTENSION_KEY], "store", EngineStore())

    result = cli("worker", "--burst")

    assert result.exit_code == 1
    assert "AFTERWARD_STORE = 'sqlite:///" in result.output
    assert "not by 'flask afterward worker'" in result.output


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--queue", ""], "a queue name cannot be empty"),
        (["--threads", "0"], "0 is not in the range x>=1"),
        (["--processes", "2"], "need the app by import path"),
    ],
)
def test_worker_refuses_bad_arguments_saying_what_to_do(
    cli: Cli, args: list[str], complaint: str
) -> None:
    result = cli("worker", "--burst", *args)

    assert result.exit_code == 2
    assert complaint in result.output


def test_enqueue_in_a_cli_command_starts_no_workers_in_that_command(
    make_app: cabc.Callable[..., Flask],
) -> None:
    # Given an app whose processes run worker threads,
    app = make_app(AFTERWARD_WORKERS=2)
    before = _worker_threads()

    # When one of its CLI commands enqueues a job,
    result = app.test_cli_runner().invoke(args=["enqueue", "from-cli"])

    # Then the command leaves the job to the workers instead of running (and, at
    # exit, waiting for) it itself.
    assert result.exit_code == 0, result.output
    assert _get(app, result.output.strip()).state == State.QUEUED
    assert not _worker_threads() - before


# worker, as real processes


def test_worker_processes_stop_together_on_one_sigterm(
    processes: Processes, app: Flask, tmp_path: pathlib.Path
) -> None:
    # Given a supervisor with two worker processes,
    supervisor = processes.worker("--processes", "2", "--threads", "1", ready=2)
    children = children_of(supervisor.pid)
    assert len(children) == 2
    with app.app_context():
        job_id = jobs.record.delay("supervised").id
    wait_until(lambda: _get(app, job_id).state == State.SUCCEEDED, 15, "the job to run")

    # When the supervisor gets SIGTERM,
    supervisor.popen.send_signal(signal.SIGTERM)

    # Then it and both its processes stop gracefully, and it says so once.
    assert supervisor.wait(20) == 0
    log = supervisor.log()
    assert log.count("shutting down gracefully… (press Ctrl+C again to force)") == 1
    assert all(f"Worker process {pid} stopped." in log for pid in children)
    assert (tmp_path / "supervised").read_text().split()[0] in map(str, children)


def test_worker_processes_stop_when_their_supervisor_is_killed(processes: Processes) -> None:
    supervisor = processes.worker("--processes", "2", "--threads", "1", ready=2)
    children = children_of(supervisor.pid)

    supervisor.popen.kill()
    supervisor.wait()

    wait_until(lambda: all(_is_gone(pid) for pid in children), 15, "the workers to exit")
    assert supervisor.log().count("lost its supervisor") == 2


def _is_gone(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited; its new parent has not reaped it yet


def test_a_worker_process_that_dies_is_restarted_by_its_supervisor(
    processes: Processes,
) -> None:
    supervisor = processes.worker("--processes", "2", "--threads", "1", ready=2)
    victim, survivor = children_of(supervisor.pid)
    # Only a process that lived MIN_UPTIME is restarted (no crash loop): let it.
    time.sleep(MIN_UPTIME + 0.1)

    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: supervisor.log().count(" started: ") == 3, 15, "a new worker process")
    assert f"Worker process {victim} exited with status -9; restarting." in supervisor.log()
    now = children_of(supervisor.pid)
    assert len(now) == 2
    assert survivor in now
    assert victim not in now


def test_a_worker_prunes_expired_jobs_on_its_own(processes: Processes, app: Flask) -> None:
    expired = _add(app, State.SUCCEEDED, result_ttl=0.5)
    kept = _add(app, State.SUCCEEDED, result_ttl=3600)

    processes.worker("--threads", "1")

    wait_until(lambda: store_of(app).get(expired.id) is None, 15, "the expired job to go")
    assert store_of(app).get(kept.id) is not None
