"""The dashboard's actions: retry, cancel and delete one job, or all jobs a filter matches.

Each is a plain form POST (it works without JavaScript), passes the CSRF check of
:mod:`.access` before it gets here, and is logged on the ``flask_afterward`` logger at
INFO: who, what, which jobs, and when (the log record's time). A bulk action first
shows a confirmation page (a GET, which changes nothing) listing the filter and the
first jobs it matches.
"""

from __future__ import annotations

import logging
import time
import typing as t

from flask import abort
from flask import Blueprint
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for

from ..stores.base import JobFilter
from . import access
from .pages import current_filter
from .pages import filter_args
from .pages import store

logger = logging.getLogger(__name__)

#: Action name → what the log and the page say it did.
ACTIONS: t.Final = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}
#: Jobs a confirmation page shows of those it would act on.
PREVIEW: t.Final = 20


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule(
        "/job/<job_id>/<action>", view_func=act_on_one, methods=["POST"], endpoint="act"
    )
    blueprint.add_url_rule("/bulk/<action>", view_func=confirm_bulk, endpoint="confirm_bulk")
    blueprint.add_url_rule(
        "/bulk/<action>", view_func=act_on_all, methods=["POST"], endpoint="act_bulk"
    )


def _known(action: str) -> str:
    if action not in ACTIONS:
        abort(404, f"No action {action!r}: use retry, cancel or delete.")
    return action


def act_on_one(job_id: str, action: str) -> t.Any:
    _known(action)
    observable = store()
    record = observable.get(job_id)
    if record is None:
        abort(404, f"No job {job_id!r}: unknown, deleted, or expired.")
    did = {"retry": observable.retry, "cancel": observable.cancel, "delete": observable.delete}
    changed = did[action](job_id)
    logger.info(
        "Dashboard: %s %s job %s (%s, was %s)%s.",
        access.actor(),
        ACTIONS[action],
        job_id,
        record.task,
        record.state,
        "" if changed else ": refused, nothing changed",
    )
    outcome = ACTIONS[action] if changed else f"not-{ACTIONS[action]}"
    back = _safe_next(request.form.get("next"))
    if back is not None:
        return redirect(f"{back}{'&' if '?' in back else '?'}done={outcome}", 303)
    if action == "delete" and changed:
        return redirect(url_for(".browse", done=outcome), 303)
    return redirect(url_for(".job", job_id=job_id, done=outcome), 303)


def _safe_next(value: str | None) -> str | None:
    """A ``next`` URL only if it stays in the dashboard (no open redirect)."""
    prefix = request.script_root + access.settings().url_prefix + "/"
    if value and value.startswith(prefix) and not value.startswith("//") and "\\" not in value:
        return value
    return None


def _form_filter() -> JobFilter:
    """The filter a bulk form carries (the same fields as the list's query string)."""
    form = request.form
    try:
        return JobFilter(
            state=form.get("state") or None,
            queue=form.get("queue") or None,
            task=form.get("task") or None,
            search=form.get("q") or None,
        )
    except ValueError as error:
        abort(400, str(error))


def confirm_bulk(action: str) -> t.Any:
    _known(action)
    where, note = current_filter()
    preview = store().browse(where, limit=PREVIEW, now=time.time())
    return render_template(
        "afterward/confirm.html",
        action=action,
        where=where,
        args=filter_args(where),
        preview=preview.records,
        more=preview.next_cursor is not None,
        note=note,
    )


def act_on_all(action: str) -> t.Any:
    _known(action)
    where = _form_filter()
    if where == JobFilter() and request.form.get("everything") != "yes":
        abort(400, "A bulk action without a filter must be confirmed for every job.")
    observable = store()
    now = time.time()
    do = {
        "retry": observable.retry_matching,
        "cancel": observable.cancel_matching,
        "delete": observable.delete_matching,
    }
    count = do[action](where, now)
    logger.info(
        "Dashboard: %s %s %d jobs matching %s.",
        access.actor(),
        ACTIONS[action],
        count,
        filter_args(where) or "every job",
    )
    return redirect(
        url_for(".browse", **filter_args(where), done=f"{ACTIONS[action]}-{count}"), 303
    )
