"""An app with durable-job tasks, for the CLI and the real-process recovery tests.

Load it as ``flask --app tests.apps.jobs afterward worker`` or serve it with
``python -m tests.apps.jobs_serve FD``. The environment configures it:

``JOBS_OUT``
    A directory. Every task appends one line per attempt to a file there, so a test
    counts side effects (attempts, duplicates) across processes by reading files.
``JOBS_AFTERWARD_*``
    Config keys, JSON-parsed (``JOBS_AFTERWARD_LEASE=2``), as ``from_prefixed_env``
    reads them.

Tasks live at module level, so every process that imports this module has them under
the same names (rq's ``tests/fixtures.py``).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time

import click
from flask import Flask

from flask_afterward import after_this_response
from flask_afterward import Afterward
from flask_afterward import current_job

afterward = Afterward()


def _out() -> pathlib.Path:
    return pathlib.Path(os.environ["JOBS_OUT"])


def _append(name: str, line: str) -> None:
    """Append ``line`` to ``OUT/name``: one ``write`` on an ``O_APPEND`` file, so lines
    from concurrent processes never mix."""
    with open(_out() / name, "a") as file:
        file.write(f"{line}\n")


def _lines(name: str) -> int:
    path = _out() / name
    return len(path.read_text().splitlines()) if path.exists() else 0


@afterward.task
def record(name: str) -> str:
    """Leave one line per attempt in ``name``; the plainest job there is."""
    _append(name, f"{os.getpid()} {current_job.attempt}")
    return name


@afterward.task
def fail(message: str) -> None:
    """Always fail, for ``show`` and ``retry``."""
    raise RuntimeError(message)


@afterward.task
def fan_out(names: list[str]) -> None:
    """Enqueue one ``record`` job per name: a job that makes jobs."""
    for name in names:
        record.delay(name)


@afterward.task
def count(number: int) -> int:
    """One line per run in a per-process file: exactly-once checks read them all."""
    _append(f"count-{os.getpid()}.txt", str(number))
    return number


@afterward.task
def hang_first(name: str) -> str:
    """Hang on the first attempt (a test kills its worker); later attempts return."""
    _append(name, f"start {os.getpid()} {current_job.attempt}")
    if current_job.attempt == 1:
        time.sleep(120)
    _append(name, "done")
    return name


@afterward.task
def slow(name: str, first: float, later: float) -> str:
    """Run ``first`` seconds the first time it starts, ``later`` seconds after that.

    A requeued attempt is given back (attempt 1 again), so the side-effect file, not
    ``current_job.attempt``, tells a restart from a first start.
    """
    is_first = _lines(name) == 0
    _append(name, "start")
    time.sleep(first if is_first else later)
    _append(name, "done")
    return name


def create_app() -> Flask:
    """The app, configured from ``JOBS_*`` variables; no in-process workers by default,
    so only the ``flask afterward worker`` processes a test starts run jobs."""
    app = Flask(__name__, instance_path=os.path.join(os.environ["JOBS_OUT"], "instance"))
    app.config.update(AFTERWARD_WORKERS=0)
    app.config.from_prefixed_env("JOBS")
    afterward.init_app(app)

    @app.get("/ready")
    def ready() -> str:
        return "ready"

    @app.post("/signup/<name>")
    def signup(name: str) -> dict[str, str]:
        # The callback pool (AFTERWARD_CALLBACK_THREADS=1 in the tests) runs this
        # request's callbacks in order, so the hold keeps the job's release from
        # happening: a kill now leaves the job deferred, as a crash would.
        after_this_response(_hold_pool)
        job = record.after_response(name)
        return {"id": job.id}

    @app.cli.command("enqueue")
    @click.argument("name")
    @click.option("--seconds", type=float, default=0.0)
    def enqueue(name: str, seconds: float) -> None:
        """Enqueue one ``slow`` job from a CLI command, as a user's script would."""
        job = slow.delay(name, seconds, seconds)
        click.echo(job.id)

    return app


_forever = threading.Event()


def _hold_pool() -> None:
    _forever.wait(120)
