"""Run work after the response in Flask: in-process callbacks, durable jobs, or Celery/RQ."""

from __future__ import annotations

from .callbacks import after_this_response as after_this_response
from .callbacks import ResponseInfo as ResponseInfo
from .extension import Afterward as Afterward

__all__ = ["Afterward", "ResponseInfo", "after_this_response"]
