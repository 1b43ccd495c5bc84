"""One producer of the tier-2 benchmark: enqueue no-op jobs between marks, timed.

    python tier2_producer.py SYSTEM --count N --marks DIR [--first NAME]
                            [--warmup K --warm NAME] [--last NAME]

Enqueues, in order: mark FIRST, K no-op jobs, mark WARM, then the N timed no-op jobs,
then mark LAST (each mark only if named), through each system's own public API. Prints
``{"started": <time.time() before the N>, "seconds": <how long the N took>, …}`` and
the :func:`tier2_common.usage` of the N.
"""

from __future__ import annotations

import argparse
import collections.abc as cabc
import contextlib
import json
import os
import pathlib
import time

import tier2_common

Enqueue = cabc.Callable[[], object]
Mark = cabc.Callable[[str], object]
SYSTEMS = ("afterward", "huey", "rq", "celery", "raw")


@contextlib.contextmanager
def afterward() -> cabc.Iterator[tuple[Enqueue, Mark]]:
    import tier2_afterward_app as jobs

    app = jobs.create_app()
    with app.app_context():
        yield jobs.noop.delay, jobs.mark.delay
    jobs.afterward.close(app)


@contextlib.contextmanager
def huey() -> cabc.Iterator[tuple[Enqueue, Mark]]:
    import tier2_huey_app as jobs

    yield jobs.noop, jobs.mark  # calling a Huey task enqueues it


@contextlib.contextmanager
def rq() -> cabc.Iterator[tuple[Enqueue, Mark]]:
    import redis
    import rq as rq_
    import tier2_rq_tasks as jobs

    connection = redis.Redis.from_url(os.environ[tier2_common.REDIS_ENV])
    queue = rq_.Queue(tier2_common.QUEUE, connection=connection)
    yield (lambda: queue.enqueue(jobs.noop)), (lambda path: queue.enqueue(jobs.mark, path))
    connection.close()


@contextlib.contextmanager
def celery() -> cabc.Iterator[tuple[Enqueue, Mark]]:
    import tier2_celery_app as jobs

    yield jobs.noop.delay, jobs.mark.delay


@contextlib.contextmanager
def raw() -> cabc.Iterator[tuple[Enqueue, Mark]]:
    import tier2_raw

    db = tier2_raw.connect(os.environ[tier2_common.DB_ENV])
    yield (
        (lambda: db.execute(tier2_raw.INSERT, (tier2_raw.NOOP,))),
        (lambda path: db.execute(tier2_raw.INSERT, (f"mark:{path}",))),
    )
    db.close()


def produce(system: str, args: argparse.Namespace) -> dict[str, float]:
    opened = {"afterward": afterward, "huey": huey, "rq": rq, "celery": celery, "raw": raw}
    marks = pathlib.Path(args.marks)
    with opened[system]() as (noop, mark):
        if args.first:
            mark(str(marks / args.first))
        for _ in range(args.warmup):
            noop()
        if args.warm:
            mark(str(marks / args.warm))
        before = tier2_common.clocks()
        begun = time.perf_counter()
        for _ in range(args.count):
            noop()
        seconds = time.perf_counter() - begun
        after = tier2_common.clocks()
        if args.last:
            mark(str(marks / args.last))
    usage = tier2_common.usage(before, after, args.count) if args.count else {}
    return {"started": before["time"], "seconds": seconds, **usage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--marks", required=True, help="folder the mark files go to")
    parser.add_argument("--first", default="")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--warm", default="")
    parser.add_argument("--last", default="")
    args = parser.parse_args()
    print(json.dumps(produce(args.system, args)), flush=True)


if __name__ == "__main__":
    main()
