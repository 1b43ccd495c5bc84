"""Build a slow report: ``202 Accepted`` at once, a progress bar, then a CSV download.

``POST /reports/`` is an ``@afterward.accepted`` view. The request is stored as a job
and answered at once with ``202 Accepted`` and the job's URLs; a worker replays the
request through the app, the view runs there for ``DEMO_REPORT_SECONDS`` seconds
calling ``progress()``, and its response, a CSV file, is served at the job's result
URL. The page follows the job with ``static/follow-job.js`` (Server-Sent Events, or
polling) and shows a download link when it is done.

The ``before_request`` hook checks the form in the request, so a bad row count gets a
400 and no job; it runs again in the worker, where it sets ``g.rows`` for the view.
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import random
import time

from flask import abort
from flask import Blueprint
from flask import current_app
from flask import g
from flask import render_template
from flask import request
from flask import Response

from demoapp.extensions import afterward
from flask_afterward import current_job
from flask_afterward import progress

bp = Blueprint(
    "reports",
    __name__,
    url_prefix="/reports",
    template_folder="templates",
    static_folder="static",
)

logger = logging.getLogger("demo.reports")

#: The most rows a report may have.
MAX_ROWS = 100_000
#: How many times the view reports its progress.
STEPS = 20

REGIONS = ("north", "south", "east", "west")
PRODUCTS = ("kettle", "toaster", "blender", "grinder", "scale")


@bp.get("/")
def index() -> str:
    return render_template("demo/reports.html", max_rows=MAX_ROWS)


@bp.before_request
def check_form() -> None:
    """Validate the row count, in the request and again in the worker's replay."""
    if request.endpoint != "reports.build":
        return
    rows = request.form.get("rows", type=int)
    if rows is None or not 1 <= rows <= MAX_ROWS:
        abort(400, f"Ask for 1 to {MAX_ROWS} rows.")
    g.rows = rows
    if not current_job:  # in the request: the view itself runs in a worker
        logger.info("report of %d rows asked for: answering 202, a worker builds it", rows)


@bp.post("/")
@afterward.accepted(timeout=300)
def build() -> Response:
    """The slow view. It runs in a worker, in a replay of the request that asked."""
    rows: int = g.rows
    seconds: float = current_app.config["DEMO_REPORT_SECONDS"]
    logger.info(
        "building report of %d rows (job %s, attempt %d)", rows, current_job.id, current_job.attempt
    )
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "region", "product", "units", "revenue"])
    fake = random.Random(rows)  # the same rows each time for the same count
    day = datetime.date(2026, 1, 1)
    done = 0
    for step in range(STEPS):
        time.sleep(seconds / STEPS)  # the slow part: pretend to query a database
        until = rows * (step + 1) // STEPS
        for number in range(done, until):
            units = fake.randint(1, 40)
            writer.writerow(
                [
                    (day + datetime.timedelta(days=number % 365)).isoformat(),
                    fake.choice(REGIONS),
                    fake.choice(PRODUCTS),
                    units,
                    f"{units * fake.uniform(9, 99):.2f}",
                ]
            )
        done = until
        # Reports progress, and stops the job here if it was cancelled.
        progress(done / rows, f"{done} of {rows} rows")
    logger.info("built report of %d rows (job %s)", rows, current_job.id)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f"attachment; filename=report-{rows}-rows.csv"
    return response
