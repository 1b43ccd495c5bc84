"""The dashboard's pages: overview, job lists, one job, workers.

Every page reads the store through :class:`~flask_afterward.stores.base.ObservableStore`
and renders server-side; the lists are plain GET URLs (``?state=&queue=&task=&q=``),
so a filtered view can be bookmarked or shared, and pages follow a keyset cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import typing as t
import urllib.parse

from flask import abort
from flask import Blueprint
from flask import current_app
from flask import render_template
from flask import request
from flask import url_for

from ..config import EXTENSION_KEY
from ..records import error_summary
from ..records import JobRecord
from ..records import State
from ..records import TERMINAL
from ..stores.base import FILTER_STATES
from ..stores.base import JobFilter
from ..stores.base import MIN_SEARCH
from ..stores.base import ObservableStore
from ..stores.base import WORKER_STALE_AFTER
from ..views import ACCEPTED_TASK
from . import access
from .live import live

#: Jobs per list page.
PAGE_SIZE: t.Final = 50
#: Minutes the overview's chart shows.
CHART_MINUTES: t.Final = 60
_ID_PATTERN: t.Final = re.compile(r"[A-Za-z0-9_-]{22}")


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/", view_func=overview, endpoint="overview")
    blueprint.add_url_rule("/browse", view_func=browse, endpoint="browse")
    blueprint.add_url_rule("/job/<job_id>", view_func=job, endpoint="job")
    blueprint.add_url_rule("/workers", view_func=workers, endpoint="workers")


def store() -> ObservableStore:
    """The app's store, or a 501 if it cannot answer the dashboard's queries."""
    found = current_app.extensions[EXTENSION_KEY].store
    if not isinstance(found, ObservableStore):
        abort(
            501,
            f"The job store ({type(found).__name__}) cannot answer the dashboard's "
            "queries; the dashboard needs the sqlite or memory store.",
        )
    return found


def template_helpers() -> dict[str, t.Any]:
    """What every dashboard template may call."""
    return {
        "csrf_token": access.csrf_token,
        "csrf_field": access.CSRF_FIELD,
        "can_write": lambda: access.may("write"),
        "states": FILTER_STATES,
        "when": when,
        "age": age,
        "seconds": seconds,
        "now": time.time(),
    }


def when(timestamp: float | None) -> str:
    """A stored time in UTC, to the second."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def seconds(value: float | None) -> str:
    """A duration, short: ``850 ms``, ``12.5 s``, ``3 min``, ``2 h``."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.0f} h"


def age(timestamp: float | None) -> str:
    """How long ago (or, with ``in``, how long until) ``timestamp``."""
    if timestamp is None:
        return ""
    delta = time.time() - timestamp
    return f"in {seconds(-delta)}" if delta < 0 else f"{seconds(delta)} ago"


def current_filter() -> tuple[JobFilter, str | None]:
    """The list filter in the query string, and a note if part of it was ignored."""
    args = request.args
    state = args.get("state") or None
    if state is not None and state not in FILTER_STATES:
        abort(400, f"Unknown state {state!r}: use one of {', '.join(FILTER_STATES)}.")
    search = (args.get("q") or "").strip() or None
    note = None
    if search is not None and len(search) < MIN_SEARCH:
        note = f"Search needs at least {MIN_SEARCH} characters; {search!r} was ignored."
        search = None
    where = JobFilter(
        state=state,
        queue=args.get("queue") or None,
        task=args.get("task") or None,
        search=search,
    )
    return where, note


def filter_args(where: JobFilter) -> dict[str, t.Any]:
    """``where`` as query arguments (for links, forms and the live stream)."""
    values = {"state": where.state, "queue": where.queue, "task": where.task, "q": where.search}
    return {key: value for key, value in values.items() if value}


def overview() -> t.Any:
    observable = store()

    def fragment() -> str:
        now = time.time()
        summary = observable.overview(now)
        queues = sorted({queue for queue, _ in summary.counts})
        totals = {state: 0 for state in FILTER_STATES}
        for (_, state), count in summary.counts.items():
            totals[state] = totals.get(state, 0) + count
        failed = observable.browse(JobFilter(state="failed"), limit=5, now=now).records
        return render_template(
            "afterward/_overview.html",
            counts=summary.counts,
            queues=queues,
            totals=totals,
            oldest=summary.oldest_runnable,
            chart=chart(observable, now),
            failed=failed,
            now=now,
        )

    return live(fragment, lambda html: render_template("afterward/overview.html", live=html))


def chart(observable: ObservableStore, now: float) -> dict[str, t.Any]:
    """Bars of the jobs finished in each of the last minutes, failures apart."""
    first = (now // 60 - CHART_MINUTES) * 60
    minutes = [first + 60 * index for index in range(CHART_MINUTES)]
    done = dict.fromkeys(minutes, 0)
    failed = dict.fromkeys(minutes, 0)
    p95: dict[float, float] = {}
    for minute in observable.series(first):
        if minute.minute not in done:
            continue
        done[minute.minute] += minute.count
        if minute.state == State.FAILED:
            failed[minute.minute] += minute.count
        if minute.state == State.SUCCEEDED and minute.p95 is not None:
            p95[minute.minute] = max(p95.get(minute.minute, 0.0), minute.p95)
    peak = max(done.values(), default=0) or 1
    bars = [
        {
            "x": index * 10,
            "height": round(80 * done[minute] / peak, 1),
            "failed": round(80 * failed[minute] / peak, 1),
            "label": f"{when(minute)[11:16]} UTC: {done[minute]} finished, "
            f"{failed[minute]} failed" + (f", p95 {seconds(p95[minute])}" if minute in p95 else ""),
        }
        for index, minute in enumerate(minutes)
    ]
    total = sum(done.values())
    return {"bars": bars, "peak": peak, "total": total, "per_second": total / (60 * CHART_MINUTES)}


def browse() -> t.Any:
    observable = store()
    where, note = current_filter()
    cursor = request.args.get("cursor") or None
    if cursor is not None and not re.fullmatch(r"[0-9.e+-]+:[0-9]+", cursor):
        abort(400, "This page's cursor is not valid: start again from the first page.")
    args = filter_args(where)

    def fragment() -> str:
        page = observable.browse(where, limit=PAGE_SIZE, cursor=cursor, now=time.time())
        next_url = None
        if page.next_cursor is not None:
            next_url = url_for(".browse", **args, cursor=page.next_cursor)
        return render_template(
            "afterward/_jobs.html",
            records=page.records,
            next_url=next_url,
            back=url_for(".browse", **args, cursor=cursor),
        )

    def page(html: str) -> str:
        return render_template(
            "afterward/jobs.html",
            live=html,
            where=where,
            args=args,
            note=note,
            cursor=cursor,
            done=request.args.get("done"),
        )

    return live(fragment, page)


def job(job_id: str) -> t.Any:
    observable = store()
    if not _ID_PATTERN.fullmatch(job_id) or observable.get(job_id) is None:
        abort(404, f"No job {job_id!r}: unknown, deleted, or expired.")

    def fragment() -> str:
        record = observable.get(job_id)
        if record is None:
            return render_template("afterward/_gone.html", job_id=job_id)
        return render_template("afterward/_job.html", job=describe(record), record=record)

    return live(
        fragment,
        lambda html: render_template(
            "afterward/job.html", live=html, job_id=job_id, done=request.args.get("done")
        ),
    )


def describe(record: JobRecord) -> dict[str, t.Any]:
    """What the job page shows, decoded from the stored JSON."""
    payload = _json(record.payload)
    captured = None
    if record.task == ACCEPTED_TASK and isinstance(payload, dict):
        args = payload.get("args") or [None]
        captured = _captured(args[0]) if isinstance(args[0], dict) else None
    result = _json(record.result) if record.result is not None else None
    response = None
    if record.task == ACCEPTED_TASK and isinstance(result, dict) and "status" in result:
        response = {**result, "body": _text(result.get("body"))}
        result = None
    summary = error_summary(record.error)
    runtime = None
    if record.started_at is not None and record.finished_at is not None:
        runtime = record.finished_at - record.started_at
    return {
        "arguments": _pretty(payload),
        "result": None if result is None else _pretty(result),
        "response": response,
        "request": captured,
        "error": summary,
        "runtime": runtime,
        "has_secrets": record.secrets is not None,
        "is_finished": record.state in TERMINAL,
        "can_retry": record.state in (State.FAILED, State.CANCELLED),
        "can_cancel": record.state not in TERMINAL,
        "can_delete": record.state != State.RUNNING,
    }


def _json(text: str | None) -> t.Any:
    try:
        return json.loads(text or "null")
    except ValueError:
        return text


def _pretty(value: t.Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _text(body: object, limit: int = 4000) -> str:
    """A stored base64 body as text, if it is text, shortened."""
    if not isinstance(body, str):
        return ""
    try:
        data = base64.b64decode(body)
    except (binascii.Error, ValueError):
        return ""
    text = data[:limit].decode("utf-8", "replace")
    return text + ("…" if len(data) > limit else "")


def _captured(captured: dict[str, t.Any]) -> dict[str, t.Any]:
    """An accepted view's captured request, as shown: its secret headers were never in
    it (they live in the job's ``secrets``, wiped when it finishes, and never shown)."""
    query = captured.get("query_string") or ""
    return {
        "method": captured.get("method"),
        "url": (captured.get("path") or "") + ("?" + urllib.parse.unquote(query) if query else ""),
        "remote_addr": captured.get("remote_addr"),
        "endpoint": captured.get("endpoint"),
        "headers": captured.get("headers") or [],
        "body": _text(captured.get("body")),
    }


def workers() -> t.Any:
    observable = store()

    def fragment() -> str:
        now = time.time()
        beats = observable.workers()
        return render_template(
            "afterward/_workers.html",
            beats=beats,
            now=now,
            stale_after=WORKER_STALE_AFTER,
        )

    return live(fragment, lambda html: render_template("afterward/workers.html", live=html))
