"""Signals sent by flask-afterward, in the style of :mod:`flask.signals`.

Receivers turn logging and metrics into plug-ins instead of code inside the worker.
blinker ships with Flask, so this adds no dependency.
"""

from __future__ import annotations

import logging
import typing as t

from blinker import Namespace

if t.TYPE_CHECKING:
    from blinker import NamedSignal

logger = logging.getLogger(__name__)

_signals = Namespace()

#: Sent with the app as sender when a job is stored; ``job=`` is the ``Job`` handle.
job_enqueued = _signals.signal("job-enqueued")
#: Sent with the app as sender when a worker starts a job attempt; ``job=``.
job_started = _signals.signal("job-started")
#: Sent with the app as sender when an attempt ends; ``job=`` and ``outcome=``
#: (``"succeeded"``, ``"failed"``, ``"retrying"`` or ``"cancelled"``).
job_finished = _signals.signal("job-finished")
#: Sent with the app as sender when an after-response callback raised;
#: ``callback=`` is the function and ``exception=`` what it raised.
callback_failed = _signals.signal("callback-failed")


def send_guarded(signal: NamedSignal, sender: object, **kwargs: t.Any) -> None:
    """Send ``signal``; a receiver that raises is logged, and never reaches the caller.

    Jobs are signalled after they were stored: a metrics or logging bug in a receiver
    must neither make ``.delay()`` raise (its caller would enqueue the job again) nor
    strand or fail a running job.
    """
    try:
        signal.send(sender, **kwargs)
    except Exception:
        logger.exception("A receiver of the %s signal failed.", signal.name)
