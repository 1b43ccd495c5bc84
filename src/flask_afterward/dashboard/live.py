"""Pages that update themselves: one view renders a page, its live part, or a stream.

Each live page has one region (``data-live`` in its template). ``?live=fragment``
returns that region's HTML alone, for polling; ``?live=events`` streams it as
Server-Sent Events, one ``update`` event each time it changes, with the jobs API's
timings (:mod:`flask_afterward.views`): a comment after a second of silence, so the
server notices a client that left and frees its thread, and an end after
``EVENTS_MAX_SECONDS``, after which EventSource reconnects by itself.
"""

from __future__ import annotations

import collections.abc as cabc
import json
import time
import typing as t

from flask import current_app
from flask import request
from flask import Response
from flask import stream_with_context

from ..views import EVENTS_MAX_SECONDS

#: Seconds between two renders of a streamed region.
POLL: t.Final = 0.5
#: Seconds of silence after which a stream writes a comment (as the jobs API does).
HEARTBEAT: t.Final = 1.0


def live(fragment: cabc.Callable[[], str], page: cabc.Callable[[str], str]) -> Response | str:
    """The page with ``fragment()`` in it, or what ``?live=`` asks for."""
    mode = request.args.get("live")
    if mode == "fragment":
        response = current_app.response_class(fragment(), mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response
    if mode == "events":
        stream = stream_with_context(_events(fragment))
        response = current_app.response_class(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response
    return page(fragment())


def _events(fragment: cabc.Callable[[], str]) -> cabc.Iterator[str]:
    deadline = time.monotonic() + EVENTS_MAX_SECONDS
    last = None
    quiet_since = time.monotonic()
    yield "retry: 1000\n\n"
    while time.monotonic() < deadline:
        html = fragment()
        if html != last:
            last = html
            yield f"event: update\ndata: {json.dumps(html)}\n\n"
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        time.sleep(POLL)
