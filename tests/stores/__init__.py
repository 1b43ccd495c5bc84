"""Store tests: one contract suite for every store, plus what only sqlite has."""

from __future__ import annotations
