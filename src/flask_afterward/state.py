"""Per-app state, and the one way to find it: :func:`get_state`.

``init_app`` builds one :class:`AppState` per app and keeps it in
``app.extensions["afterward"]`` (never on the ``Afterward`` object, which may serve
several apps). Everything that needs the app's store, executor or callback pool looks
it up here, so "not registered" and "no app context" fail the same way everywhere.

:class:`AppState` is also the engine the rest of the package talks to: the store of
record plus the executor that runs its jobs. ``enqueue`` stores a job, signals it and
hands it to the executor; ``cancel`` asks the store and, for a running job, the
executor; the ``Job`` handle reads and cancels through it.

It sits beside the stores, above ``jobs``: the components' types are imported for
annotations only, and ``extension`` builds them.
"""

from __future__ import annotations

import atexit
import collections.abc as cabc
import functools
import logging
import time
import typing as t
import weakref

from flask import current_app
from flask import has_app_context

from .config import EXTENSION_KEY
from .errors import NotInitialized
from .jobs import Job
from .records import State
from .signals import job_enqueued
from .signals import send_guarded

if t.TYPE_CHECKING:
    from flask import Flask

    from .callbacks import CallbackRunner
    from .config import Settings
    from .executors import Executor
    from .extension import Afterward
    from .records import Capability
    from .records import JobRecord
    from .stores.base import Store

logger = logging.getLogger(__name__)


class AppState:
    """Everything flask-afterward keeps for one app, in ``app.extensions["afterward"]``.

    It owns what it holds: :meth:`close` (also run at interpreter exit) gives pending
    callbacks and running jobs one shared shutdown deadline, then closes the store.
    """

    def __init__(
        self,
        *,
        app: Flask,
        afterward: Afterward,
        settings: Settings,
        store: Store,
        executor: Executor,
        callbacks: CallbackRunner,
    ) -> None:
        self.app = app
        self.afterward = afterward
        self.settings = settings
        #: the store of record
        self.store = store
        #: who runs the jobs
        self.executor = executor
        #: tier 1: the response hooks and the callback pool
        self.callbacks = callbacks
        #: what jobs of this app can have: what both the store and the executor honour
        self.capabilities: frozenset[Capability] = store.capabilities & executor.capabilities
        # Held weakly: apps that are gone (test suites) are not kept alive by atexit.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    def enqueue(self, record: JobRecord) -> JobRecord:
        """Store ``record``, signal it, and hand it to the executor if it is queued.

        With ``unique``, the active job holding the key comes back instead, and then
        nothing is signalled or submitted. In eager mode the job has run when this
        returns (and what it raised on its last attempt propagates).
        """
        stored = self.store.enqueue(record)
        if stored.id != record.id:
            return stored
        if job_enqueued.receivers:  # else skip making a handle for nobody
            send_guarded(job_enqueued, self.app, job=Job(stored, self))
        if stored.state == State.QUEUED:
            return self.executor.submit(stored)
        return stored

    def release(self, job_ids: cabc.Sequence[str]) -> None:
        """Their responses were delivered: make these deferred jobs runnable."""
        self.store.release_deferred(job_ids)
        self.executor.release(job_ids)

    def get(self, job_id: str) -> JobRecord | None:
        """The job from the store of record, or None if unknown or expired."""
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: waiting ones at once, a running one at its next ``progress()``
        (and by the executor's own means where it has one). False if it had finished
        or is unknown."""
        if not self.store.cancel(job_id):
            return False
        record = self.store.get(job_id)
        if record is not None and record.state == State.RUNNING:
            self.executor.stop_running(job_id)
        return True

    def close(self, timeout: float | None = None) -> int:
        """Let pending work finish within ``timeout`` and stop every thread.

        Returns how many callbacks did not finish plus how many running jobs were put
        back in the queue.
        """
        atexit.unregister(self._exit_hook)
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.executor.stop()  # stop claiming now; running jobs finish meanwhile
        pool = self.callbacks.pool
        left = pool.close(timeout) if pool is not None else 0
        left += self.executor.close(max(0.0, deadline - time.monotonic()))
        self.store.close()
        return left


def _close_at_exit(state: weakref.ref[AppState]) -> None:
    alive = state()
    if alive is not None:
        alive.close()


def get_state(app: Flask | None = None) -> AppState:
    """The flask-afterward state of ``app``, or of the current app.

    :raises NotInitialized: if there is no app context to find the app in, or the app
        has no ``Afterward`` registered.
    """
    if app is None:
        if not has_app_context():
            raise NotInitialized(
                "flask-afterward needs an app context here: call it in a request, in a "
                "CLI command, or inside 'with app.app_context():'."
            )
        app = t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    try:
        state: AppState = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise NotInitialized(
            "flask-afterward is not registered on this app. Did you forget to call "
            "'afterward.init_app(app)'?"
        ) from None
    return state
