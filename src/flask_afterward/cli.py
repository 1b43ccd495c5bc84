"""The ``flask afterward`` command group: workers and job administration.

``flask afterward worker`` runs :class:`~flask_afterward.worker.WorkerGroup` threads in
this process, or supervises ``--processes`` worker processes; ``supervisor`` does the
running and the two-stage shutdown, this module the command line. The other commands
(``jobs``, ``show``, ``retry``, ``cancel``, ``prune``, ``stats``) read and change the
app's store.

Errors are :class:`click.ClickException` (exit 1) or :class:`click.UsageError` (exit 2)
with a message that says what to do, never a traceback.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import logging
import os
import sys
import time
import typing as t
from datetime import datetime
from datetime import UTC

import click
from flask import current_app
from flask.cli import AppGroup
from flask.cli import ScriptInfo

from .errors import NotInitialized
from .executors import LocalExecutor
from .records import JobRecord
from .records import State
from .records import TERMINAL
from .state import get_state
from .stores.base import QueueStore
from .supervisor import run_workers
from .supervisor import Supervisor
from .worker import WorkerGroup

if t.TYPE_CHECKING:
    from flask import Flask

    from .state import AppState
    from .stores.base import Store

afterward_cli = AppGroup("afterward", help="Run workers and manage flask-afterward jobs.")


def _state() -> AppState:
    try:
        return get_state()
    except NotInitialized:
        raise click.ClickException(
            "flask-afterward is not registered on this app. Call 'afterward.init_app(app)' "
            "in the app factory."
        ) from None


def _local_executor(state: AppState) -> tuple[LocalExecutor, QueueStore]:
    executor, store = state.executor, state.store
    if not isinstance(executor, LocalExecutor) or not isinstance(store, QueueStore):
        raise click.ClickException(
            f"AFTERWARD_STORE = {state.settings.store!r} is run by the "
            f"{executor.name!r} executor, not by 'flask afterward worker'. Start that "
            "engine's workers, or set AFTERWARD_STORE to a sqlite:/// URL (and "
            "AFTERWARD_EAGER to False)."
        )
    return executor, store


# The worker


@afterward_cli.command("worker")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Worker threads per process. Jobs that wait on I/O share a process well.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, each with --threads threads. CPU-bound jobs need several.",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Take jobs from this queue only; repeat for several. Default: every queue.",
)
@click.option("--burst", is_flag=True, help="Exit once no job is runnable, instead of waiting.")
@click.option("--supervisor-pid", type=int, hidden=True)
@click.pass_context
def worker_command(
    ctx: click.Context,
    threads: int,
    processes: int,
    queues: tuple[str, ...],
    burst: bool,
    supervisor_pid: int | None,
) -> None:
    """Run jobs from the app's store until stopped (Ctrl+C or SIGTERM).

    The first signal stops taking jobs and lets running ones finish within
    AFTERWARD_SHUTDOWN_TIMEOUT seconds, then puts the rest back in the queue; a second
    signal puts them back at once and exits. Several workers, in as many processes on
    this machine, may share one SQLite store (not over a network file system).
    """
    if any(not name for name in queues):
        raise click.BadParameter("a queue name cannot be empty.", param_hint="'--queue'")
    state = _state()
    executor, store = _local_executor(state)
    _log_to_stderr()
    settings = state.settings
    if processes > 1:
        command = _child_command(ctx.ensure_object(ScriptInfo), threads, queues, burst)
        ctx.exit(Supervisor(command, processes, settings.shutdown_timeout, burst).run())
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    tasks = state.afterward.tasks
    group = WorkerGroup(
        app, store, tasks, threads=threads, queues=queues or None, lease=settings.lease
    )
    # Jobs that enqueue jobs wake this group; no AFTERWARD_WORKERS group starts beside it.
    executor.use_workers(group)
    code = run_workers(
        group,
        shutdown_timeout=settings.shutdown_timeout,
        burst=burst,
        supervisor_pid=supervisor_pid,
    )
    ctx.exit(code)


def _log_to_stderr() -> None:
    """Show the worker's lifecycle logs, unless the app configured logging itself."""
    logger = logging.getLogger("flask_afterward")
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _child_command(
    info: ScriptInfo, threads: int, queues: tuple[str, ...], burst: bool
) -> list[str]:
    """The command line of one worker process of ``--processes``.

    Each is a fresh ``python -m flask`` rather than a ``fork()`` of this process:
    the app factory, imported libraries or logging may have started threads already,
    and a child forked from a threaded process can deadlock on a lock another thread
    held at the fork (Python 3.12 warns about it); a SQLite connection must never
    cross a fork; macOS makes fork unsafe and Windows lacks it. A fresh interpreter
    costs one app import per process, once, and a crashed one is restarted clean.
    Environment (``FLASK_*``, ``.env``) and working directory are inherited.
    """
    app_option: list[str] = []
    if info.app_import_path:
        app_option = ["--app", info.app_import_path]
    elif info.create_app is not None:
        raise click.UsageError(
            "--processes starts 'python -m flask' processes, which need the app by "
            "import path: run 'flask --app module:create_app afterward worker' or set "
            "FLASK_APP."
        )
    command = [sys.executable, "-m", "flask", *app_option, "afterward", "worker"]
    command += ["--threads", str(threads), "--supervisor-pid", str(os.getpid())]
    for queue in queues:
        command += ["--queue", queue]
    return [*command, "--burst"] if burst else command


# Administration


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: cabc.Sequence[str], rows: cabc.Sequence[cabc.Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _get(store: Store, job_id: str) -> JobRecord:
    record = store.get(job_id)
    if record is None:
        raise click.ClickException(
            f"No job has the id {job_id!r}; it never existed or expired. List jobs with "
            "'flask afterward jobs'."
        )
    return record


#: Job ids are URL-safe base64, so one in 64 starts with "-": take such an argument as
#: an id, not as an unknown option (no command here has short options to confuse).
_ID_ARGUMENT: t.Final = {"ignore_unknown_options": True}

_STATE = click.Choice([state.value for state in State])


@afterward_cli.command("jobs")
@click.option("--state", type=_STATE, help="Only jobs in this state.")
@click.option("--task", help="Only jobs of this task (its full name, as listed).")
@click.option("--queue", help="Only jobs in this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def jobs_command(state: str | None, task: str | None, queue: str | None, limit: int) -> None:
    """List jobs, newest first."""
    records = _state().store.list(
        state=None if state is None else State(state), task=task, queue=queue, limit=limit
    )
    if not records:
        click.echo("No jobs match.")
        return
    rows = [
        [
            r.id,
            r.task,
            r.state.value,
            r.queue,
            str(r.attempts),
            "-" if r.progress is None else f"{r.progress:.0%}",
            _time(r.created_at),
        ]
        for r in records
    ]
    headers = ["ID", "TASK", "STATE", "QUEUE", "ATTEMPTS", "PROGRESS", "CREATED (UTC)"]
    click.echo(_table(headers, rows))


_TIMES: t.Final = frozenset({"created_at", "run_at", "started_at", "finished_at", "lease_until"})


@afterward_cli.command("show", context_settings=_ID_ARGUMENT)
@click.argument("job_id")
def show_command(job_id: str) -> None:
    """Show every field of one job, its result, and its error with the traceback.

    Secrets stored with the job (a replayed request's Cookie) are never shown.
    """
    record = _get(_state().store, job_id)
    width = max(len(field.name) for field in dataclasses.fields(record))
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name == "error":
            continue
        if field.name == "secrets" and value is not None:
            text = "(stored, not shown)"
        elif field.name in _TIMES:
            text = _time(value)
        else:
            text = "-" if value is None else str(value)
        click.echo(f"{field.name.ljust(width)}  {text}")
    click.echo(f"{'expires_at'.ljust(width)}  {_time(record.expires_at)}")
    if record.error:
        click.echo(f"error:\n{record.error.rstrip()}")


@afterward_cli.command("retry", context_settings=_ID_ARGUMENT)
@click.argument("job_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job.")
def retry_command(job_id: str | None, all_failed: bool) -> None:
    """Queue a failed or cancelled job again, as new (or every failed one)."""
    if (job_id is None) == (not all_failed):
        raise click.UsageError("Give either a job ID or --failed.")
    store = _state().store
    if job_id is None:
        click.echo(f"Queued {_retry_failed(store)} failed jobs again.")
        return
    if store.retry(job_id):
        click.echo(f"Queued job {job_id} again.")
        return
    record = _get(store, job_id)
    if record.state in (State.FAILED, State.CANCELLED):
        raise click.ClickException(
            f"Job {job_id} was not retried: an active job holds its unique key "
            f"{record.unique_key!r}. Retry it once that job has finished."
        )
    raise click.ClickException(
        f"Job {job_id} is {record.state}; only failed or cancelled jobs can be retried."
    )


def _retry_failed(store: Store) -> int:
    retried = skipped = 0
    while batch := store.list(state=State.FAILED, limit=500, offset=skipped):
        for record in batch:
            if store.retry(record.id):
                retried += 1
            else:  # an active job holds its unique key; it stays failed
                skipped += 1
    return retried


@afterward_cli.command("cancel", context_settings=_ID_ARGUMENT)
@click.argument("job_id")
def cancel_command(job_id: str) -> None:
    """Cancel a job: a waiting one never runs, a running one stops at its next progress()."""
    state = _state()
    is_cancelled = state.cancel(job_id)
    record = _get(state.store, job_id)
    if not is_cancelled:
        raise click.ClickException(f"Job {job_id} already finished ({record.state}).")
    if record.state == State.RUNNING:
        click.echo(f"Asked running job {job_id} to stop: it stops at its next progress() call.")
    else:
        click.echo(f"Cancelled job {job_id}.")


@afterward_cli.command("prune")
def prune_command() -> None:
    """Delete finished jobs whose result TTL ran out (workers also do it every minute)."""
    click.echo(f"Pruned {_state().store.prune(time.time())} finished jobs.")


@afterward_cli.command("stats")
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="The window throughput is measured over.",
)
def stats_command(minutes: float) -> None:
    """Jobs per queue and state, and how many finished per minute lately."""
    stats = _state().store.stats(time.time() - minutes * 60)
    states = list(State)
    queues = sorted({queue for queue, _ in stats.counts})
    rows = []
    for queue in [*queues, None]:
        counts = [
            sum(n for (q, s), n in stats.counts.items() if s == state and queue in (None, q))
            for state in states
        ]
        rows.append([queue or "(all)", *map(str, counts), str(sum(counts))])
    click.echo(_table(["QUEUE", *(s.value for s in states), "TOTAL"], rows))
    finished = sum(stats.finished.get(state, 0) for state in TERMINAL)
    detail = ", ".join(f"{stats.finished.get(s, 0)} {s.value}" for s in states if s in TERMINAL)
    click.echo(
        f"Finished in the last {minutes:g} min: {finished} ({detail}); "
        f"throughput {finished / minutes:.1f} jobs/min."
    )
