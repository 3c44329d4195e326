"""Celery tasks of vip-bundles. `celery -A tasks worker` / `celery -A tasks beat`.

Start reading at `tasks/saga.py`: it builds the canvas (the forward chain, the compensation
group) and holds the error callback and the process manager task.
"""

from tasks import (  # noqa: F401  (register)
    archive,
    audit,
    cancel,
    compensation,
    connections,
    flights,
    intake,
    reconcile,
    releaser,
    saga,
    shows,
)
from tasks.celery_app import app

__all__ = ["app"]
