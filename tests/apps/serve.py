"""Serve ``tests.apps.tier1`` with a server that has no CLI taking a listening socket.

``python -m tests.apps.serve werkzeug|waitress FD``: FD is a socket the parent bound to
an ephemeral port and is listening on, so there is no race for the port. gunicorn needs
no runner: ``gunicorn --bind fd://FD``.
"""

from __future__ import annotations

import socket
import sys

from tests.apps.tier1 import create_app


def main(kind: str, fd: int) -> None:
    app = create_app()
    if kind == "werkzeug":
        from werkzeug.serving import make_server

        make_server("127.0.0.1", 0, app, threaded=True, fd=fd).serve_forever()
    elif kind == "waitress":
        import waitress

        waitress.serve(app, sockets=[socket.socket(fileno=fd)], threads=4)
    else:
        raise SystemExit(f"unknown server {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
