"""Fixtures for the demo's tests: ``examples/demo.py`` as ``make demo`` runs it."""

from __future__ import annotations

import collections.abc as cabc
import importlib
import pathlib
import types
import typing as t

import pytest
from flask import Flask

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``examples/demo.py`` imported the way ``make demo`` runs it: examples/ on the path."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("demo")


def make_app(
    demo: types.ModuleType, tmp_path: pathlib.Path, **config: t.Any
) -> cabc.Iterator[Flask]:
    """The demo app, with no simulated delays and its stores under ``tmp_path``;
    closed and its database disposed afterwards."""
    settings = {"TESTING": True, "DEMO_MAIL_DELAY": 0.0, "DEMO_REPORT_SECONDS": 0.0, **config}
    app: Flask = demo.create_app(settings, instance_path=str(tmp_path / "instance"))
    yield app
    demo.afterward.close(app, timeout=5)
    with app.app_context():
        demo.signup_jobs.db.engine.dispose()


@pytest.fixture
def demo_app(demo: types.ModuleType, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """The demo as configured by default (in-process job workers on)."""
    yield from make_app(demo, tmp_path)


@pytest.fixture
def app(demo: types.ModuleType, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """No worker threads in the app: the test runs the jobs itself, with a worker."""
    yield from make_app(demo, tmp_path, AFTERWARD_WORKERS=0)


@pytest.fixture
def eager_app(demo: types.ModuleType, tmp_path: pathlib.Path) -> cabc.Iterator[Flask]:
    """AFTERWARD_EAGER: each job runs where it is enqueued, inside the request."""
    yield from make_app(demo, tmp_path, AFTERWARD_EAGER=True)
