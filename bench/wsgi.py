"""The WSGI entry point servers load: ``wsgi:app``, the variant named by ``$BENCH_APP``."""

from __future__ import annotations

import os

from apps import create_app

app = create_app(os.environ["BENCH_APP"])
