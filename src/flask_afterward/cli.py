"""The ``flask afterward`` command group: workers and job administration."""

from __future__ import annotations

from flask.cli import AppGroup

afterward_cli = AppGroup("afterward", help="Run workers and manage flask-afterward jobs.")
