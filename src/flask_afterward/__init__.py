"""Run work after the response in Flask: in-process callbacks, durable jobs, or Celery/RQ."""

from __future__ import annotations

from .callbacks import after_this_response as after_this_response
from .callbacks import ResponseInfo as ResponseInfo
from .extension import Afterward as Afterward
from .jobs import current_job as current_job
from .jobs import Job as Job
from .jobs import progress as progress
from .records import State as State
from .tasks import Task as Task

__all__ = [
    "Afterward",
    "Job",
    "ResponseInfo",
    "State",
    "Task",
    "after_this_response",
    "current_job",
    "progress",
]
