"""``tests.apps.tier1`` as a module-level WSGI callable, for uWSGI's ``--module``."""

from __future__ import annotations

from tests.apps.tier1 import create_app

application = create_app()
