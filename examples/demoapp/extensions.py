"""The demo's ``Afterward`` object, created once and registered by ``create_app``."""

from __future__ import annotations

import logging

from flask_afterward import Afterward
from flask_afterward import ResponseInfo

afterward = Afterward()

logger = logging.getLogger("demo.delivery")


@afterward.after_response
def log_delivery(info: ResponseInfo) -> None:
    """Log how long each response took, from request to delivered.

    Hooks run after the request's own callbacks, on the same thread, so for a signup
    this line comes after the mail was sent. The duration was measured when the
    response was delivered, though, and that is the time the client waited.
    """
    logger.info(
        "response delivered: %s %s -> %s in %.1f ms",
        info.method,
        info.path,
        info.status_code,
        info.duration * 1000,
    )
