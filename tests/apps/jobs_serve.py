"""Serve ``tests.apps.jobs`` with Werkzeug: ``python -m tests.apps.jobs_serve FD``.

FD is a listening socket the parent bound to an ephemeral port (as ``tests.apps.serve``
does). A module of its own, because ``python -m tests.apps.jobs`` would run the app
module as ``__main__`` and store its jobs under ``__main__.record``: names no worker
knows.
"""

from __future__ import annotations

import sys

from werkzeug.serving import make_server

from tests.apps.jobs import create_app

if __name__ == "__main__":
    make_server("127.0.0.1", 0, create_app(), threaded=True, fd=int(sys.argv[1])).serve_forever()
