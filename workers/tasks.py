"""The worker's one task, thin like a web view: take the TurnJob dict, run the turn.

``dispatcher.run_turn`` (:data:`dispatcher.turns.RUN_TURN_TASK`) hands the job to
:func:`workers.execute.execute` on the process's event loop and blocks its pool thread
until the turn is over. Provider failures are events on the turn's stream, never task
failures; the task raises only when Redis itself is unusable (then nothing can be
published, and the message's late ack is the only record left).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from dispatcher.turns import RUN_TURN_TASK, TurnJob, job_problem
from workers.execute import execute
from workers.resources import host

log = logging.getLogger(__name__)

def run_turn(job: dict[str, Any]) -> None:
    """Run one turn; malformed jobs are logged and dropped (they cannot be published)."""
    problem = job_problem(job)
    if problem is not None:
        turn_id = job.get("turn_id", "?") if isinstance(job, dict) else "?"
        log.error("turn %s: malformed job dropped (%s)", turn_id, problem)
        return
    resources = host.start()  # a no-op once the worker has started it
    host.run(execute(TurnJob(**job), resources))  # type: ignore[typeddict-item]


def register(app: Celery) -> None:
    """Register :func:`run_turn` on ``app`` under its public name."""
    app.task(name=RUN_TURN_TASK, ignore_result=True, acks_late=True)(run_turn)
