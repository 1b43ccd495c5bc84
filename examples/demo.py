"""The flask-afterward demo: ``make demo``, then open http://127.0.0.1:5000/.

This file builds the app from the parts in ``demoapp/`` and serves it with the Werkzeug
development server. Each part is a blueprint; a later demo (durable jobs, reports) adds
its own module to ``demoapp/`` and its blueprint to :data:`BLUEPRINTS`.

Settings come from the environment: ``PORT`` (default 5000), ``DEMO_MAIL_DELAY``
(seconds the simulated mail takes, default 3) and ``DEMO_REPORT_SECONDS`` (seconds a
report takes to build, default 5).
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import os
import pathlib
import typing as t

from demoapp import reports
from demoapp import signup
from demoapp import signup_jobs
from demoapp.extensions import afterward
from flask import Blueprint
from flask import Flask

#: The directory of this file.
EXAMPLES = pathlib.Path(__file__).resolve().parent

#: Every part of the demo, in the order they are registered.
BLUEPRINTS: tuple[Blueprint, ...] = (signup.bp, signup_jobs.bp, reports.bp)


def create_app(
    config: cabc.Mapping[str, t.Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Build the demo app. ``config`` overrides the defaults (tests pass a short delay)."""
    # examples/instance/, however the demo is started: "python examples/demo.py" and
    # "flask --app examples/demo.py afterward ..." must open the same job store.
    app = Flask(__name__, instance_path=instance_path or str(EXAMPLES / "instance"))
    app.config.update(
        # Signs the session cookie (flash messages) and the job URLs of /reports/;
        # this key is for the demo only.
        SECRET_KEY="flask-afterward demo, not a secret",
        DEMO_MAIL_DELAY=3.0,
        DEMO_REPORT_SECONDS=5.0,
        # The dashboard at /afterward/: with no AFTERWARD_DASHBOARD_AUTHORIZE hook it
        # lets in only requests from this machine (the demo serves 127.0.0.1 only).
        AFTERWARD_DASHBOARD=True,
    )
    if config is not None:
        app.config.update(config)
    # Every other AFTERWARD_* setting is the default.
    afterward.init_app(app)
    signup_jobs.init_app(app)  # Flask-SQLAlchemy, for the durable-jobs page
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


def main() -> None:
    """Serve the demo on 127.0.0.1:$PORT with the threaded Werkzeug server."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(threadName)-26s %(name)-20s %(message)s",
        datefmt="%H:%M:%S",
    )
    port = int(os.environ.get("PORT", "5000"))
    config: dict[str, t.Any] = {}
    for key in ("DEMO_MAIL_DELAY", "DEMO_REPORT_SECONDS"):
        if key in os.environ:
            config[key] = float(os.environ[key])
    app = create_app(config)
    logging.getLogger("demo").info(
        "Open http://127.0.0.1:%d/ (callbacks), http://127.0.0.1:%d/jobs/ (durable jobs), "
        "http://127.0.0.1:%d/reports/ (accepted views) or http://127.0.0.1:%d/afterward/ "
        "(the dashboard).",
        port,
        port,
        port,
        port,
    )
    app.run(host="127.0.0.1", port=port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
