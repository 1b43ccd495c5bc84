"""Importable apps for tests that run them in other processes (real servers)."""

from __future__ import annotations
