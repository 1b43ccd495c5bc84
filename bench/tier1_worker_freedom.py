"""Worker freedom: does deferred work hold up the one worker that serves the requests?

gunicorn with one sync worker gets 20 sequential requests, each deferring 200 ms of
work, four ways. A free worker answers them about as fast as if there were no work.
"""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import time

import apps
import harness
from harness import Benchmark

REQUESTS = 20
ROUNDS = 5
TARGET = 1.2
NONE = "defer-nothing"
#: (app variant, label)
VARIANTS: list[tuple[str, str]] = [
    ("defer-nothing", "no deferred work"),
    ("defer-afterward", "flask-afterward `after_this_response(work)`"),
    ("defer-closing-iterator", "`ClosingIterator` middleware recipe"),
    ("defer-thread", "`threading.Thread(target=work).start()` in the view"),
]


def sequential_requests(port: int, count: int) -> float:
    """Seconds for ``count`` GET requests, one after the other, each answered in full."""
    started = time.perf_counter()
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200 or body != apps.HELLO.encode():
            raise RuntimeError(f"unexpected answer {response.status} {body[:80]!r}")
    return time.perf_counter() - started


def measure(workdir: pathlib.Path) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per round for each variant, and how many units of work ran."""
    names = [name for name, _ in VARIANTS]
    totals: dict[str, list[float]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        servers = harness.gunicorns(stack, names, workdir)
        # The readiness probe deferred work too: wait for it, and count from there.
        before = {
            name: harness.count_effects(servers[name].workdir, 1, timeout=10) if name != NONE else 0
            for name in names
        }
        for number in range(ROUNDS):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                totals[name].append(sequential_requests(servers[name].port, REQUESTS))
        expected = REQUESTS * ROUNDS
        ran = {
            name: harness.count_effects(server.workdir, before[name] + expected, timeout=30)
            - before[name]
            for name, server in servers.items()
            if name != NONE
        }
        ran[NONE] = 0
    return totals, ran


def run() -> str:
    with harness.workdir("worker-freedom") as workdir:
        totals, ran = measure(workdir)
    base = totals[NONE]
    rows = []
    for name, label in VARIANTS:
        ratio = harness.median([total / b for total, b in zip(totals[name], base, strict=True)])
        expected = 0 if name == NONE else REQUESTS * ROUNDS
        mark = "✓" if ran[name] == expected else "✗"
        target = f"≤ {TARGET} " + ("✓" if ratio <= TARGET else "✗")
        rows.append(
            [
                label,
                f"{harness.median(totals[name]):.3f}",
                f"{min(totals[name]):.3f}–{max(totals[name]):.3f}",
                f"{ratio:.2f}",
                target if name == "defer-afterward" else "—",
                "—" if not expected else f"{ran[name]}/{expected} {mark}",
            ]
        )
    header = ["variant", "total s (median)", "range", "ratio", "target", "work that ran"]
    machine = harness.machine(f"gunicorn {harness.version('gunicorn')}")
    return f"""## Tier 1 worker freedom: is the worker free while deferred work runs?

{machine}

**Method.** gunicorn with **one sync worker** serves {REQUESTS} sequential requests (a new
connection each, as a sync worker closes it anyway); each request defers
{apps.SHORT_WORK * 1000:.0f} ms of work (`time.sleep({apps.SHORT_WORK})`, then a side-effect
file). Four apps, started together, measured in turn for {ROUNDS} rounds with the order
rotated; the table gives the total wall time of the {REQUESTS} requests (median over rounds)
and the median per-round ratio against no deferred work. *Work that ran* counts the
side-effect files after the last round (waiting up to 30 s), out of {REQUESTS} × {ROUNDS}.
The `ClosingIterator` recipe is the widely copied one: a middleware returning
`werkzeug.wsgi.ClosingIterator(app_iter, [after_response.flush])` that calls every
registered function on `close()`.

{harness.table(header, rows)}

The recipe runs the work inside `close()`, in the worker, so each request waits for the
previous request's work: about {REQUESTS} × {apps.SHORT_WORK} s in all. A thread per request
frees the worker too, but with one unbounded thread per call, no context and nothing
logged when it fails.
"""


BENCHMARK = Benchmark("tier1-worker-freedom", run)
