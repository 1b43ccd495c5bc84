"""The test suite is a package so that subprocesses can import ``tests.apps``."""

from __future__ import annotations
