"""The flask-afterward app of the tier-2 benchmark: a no-op task and a mark task.

Producers enqueue in its app context; ``flask --app tier2_afterward_app:create_app
afterward worker`` runs the jobs. ``AFTERWARD_STORE`` comes from ``BENCH_T2_STORE``.
"""

from __future__ import annotations

import os
import tempfile

import tier2_common
from flask import Flask

from flask_afterward import Afterward

afterward = Afterward()


@afterward.task
def noop() -> None:
    """Does nothing: what is measured is the queue around it."""


@afterward.task
def mark(path: str) -> None:
    """Write when it ran, and the worker's RSS, to ``path``."""
    tier2_common.write_mark(path)


def create_app() -> Flask:
    app = Flask(__name__, instance_path=tempfile.gettempdir())
    # No in-process workers: the producer only enqueues; a worker process runs jobs.
    app.config.update(AFTERWARD_STORE=os.environ[tier2_common.STORE_ENV], AFTERWARD_WORKERS=0)
    afterward.init_app(app)
    return app
