"""The dashboard: see, filter, retry, cancel and delete jobs in a browser, inside the app.

Imported only when ``AFTERWARD_DASHBOARD`` is on (the extension calls
:func:`init_dashboard`), and mounted at ``<AFTERWARD_URL_PREFIX>/`` beside the jobs API.
Plain server-rendered pages and forms: every page works without JavaScript, and
``afterward.js`` only makes them live (Server-Sent Events, polling as a fallback).

Who gets in is decided by :mod:`.access` before any view runs; the pages are in
:mod:`.pages` and the actions (POST only, CSRF-checked, logged) in :mod:`.actions`.
"""

from __future__ import annotations

import logging
import typing as t

from flask import Blueprint

from . import access
from . import actions
from . import pages

if t.TYPE_CHECKING:
    from flask import Flask

    from ..config import Settings

logger = logging.getLogger(__name__)


def make_blueprint() -> Blueprint:
    """A fresh blueprint per app (no module-level state), named ``afterward_dashboard``."""
    blueprint = Blueprint(
        "afterward_dashboard",
        __name__,
        template_folder="templates",
        static_folder="static",
        # Not "/static": the app's own static files may live under the same prefix.
        static_url_path="/dashboard-static",
    )
    blueprint.before_request(access.check_access)
    blueprint.after_request(access.set_csrf_cookie)
    blueprint.context_processor(pages.template_helpers)
    pages.register(blueprint)
    actions.register(blueprint)
    return blueprint


def init_dashboard(app: Flask, settings: Settings) -> None:
    """Mount the dashboard on ``app`` at ``<url_prefix>/``; warn if it is loopback-only."""
    app.register_blueprint(make_blueprint(), url_prefix=settings.url_prefix)
    if settings.dashboard_authorize is None:
        logger.warning(
            "The flask-afterward dashboard at %s/ lets in only requests from the loopback "
            "address (127.0.0.0/8, ::1), because AFTERWARD_DASHBOARD_AUTHORIZE is not "
            "set. Set it to a callable(action) -> bool to decide who may use it.",
            settings.url_prefix,
        )
