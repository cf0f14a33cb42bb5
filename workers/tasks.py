"""Celery tasks: thin. Each takes ids, calls one service, and is safe to receive twice.

Their names are the constants of `tasks_app.services.enqueue`, which sends them by name.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init, worker_ready
from django.conf import settings

from executors.sandbox import bwrap_check
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.enqueue import DISPATCH, EXECUTE_RUN, FIRE_SCHEDULE, TICK
from tasks_app.services.groups import groups_check_credentials
from tasks_app.services.runs import leases_reconcile, run_logs_prune
from tasks_app.services.schedules import schedule_fire
from tasks_app.services.workers import tick_heartbeat, workers_prune
from workers.execution import attempt_run, worker_id
from workers.maintenance import prune_processed_messages, stale_work_dirs_remove


# Early ack (settings): a lost run is recovered by the lease and the reconciler, never by redelivery.
@shared_task(bind=True, name=EXECUTE_RUN, ignore_result=True)
def execute_run_task(self, task_id: str, lease_token: str) -> None:
    if attempt_run(task_id=task_id, lease_token=lease_token, celery_task_id=self.request.id or ""):
        # Refill the freed slot now, from here: a round trip through the control queue would leave the slot
        # idle for tens of milliseconds per job. The dispatch lock keeps every cap exact wherever it runs.
        dispatch_runnable()


@shared_task(name=DISPATCH, ignore_result=True)
def dispatch_task() -> int:
    return len(dispatch_runnable())


@shared_task(name=FIRE_SCHEDULE, ignore_result=True)
def fire_schedule_task(schedule_id: int) -> None:
    """Beat's wake-up for one schedule: fires it if (and only if) a slot is due."""
    schedule_fire(schedule_id=schedule_id, source="beat")


@shared_task(name=TICK, ignore_result=True)
def tick_task() -> None:
    """Periodic safety net: recover expired leases, dispatch, prune the embedded broker's processed files and
    long-gone workers. Its own heartbeat is what /healthz reports as `beat`."""
    tick_heartbeat()
    leases_reconcile()
    dispatch_runnable()
    prune_processed_messages()
    run_logs_prune()
    workers_prune()


logger = logging.getLogger(__name__)


@worker_init.connect
def _refuse_to_run_unsandboxed(**_: object) -> None:
    """No sandbox, no worker: running CLIs unsandboxed takes an explicit SCHEDULER_SANDBOX=off."""
    if settings.SCHEDULER_SANDBOX == "off":
        return  # said in the worker's log once it is set up (below)
    problem = bwrap_check()
    if problem:
        # SystemExit, not an exception: Celery logs and ignores exceptions from signal handlers.
        raise SystemExit(f"worker refuses to start: {problem}. Install the Debian package bubblewrap, or set "
                         f"SCHEDULER_SANDBOX=off to run CLIs unsandboxed (docs/security.md).")


@worker_ready.connect
def _on_worker_ready(sender: object = None, **_: object) -> None:
    if settings.SCHEDULER_SANDBOX == "off":
        logger.warning("SCHEDULER_SANDBOX=off: CLIs run without a sandbox and can read what this worker can read")
    stale_work_dirs_remove()
    queues = getattr(getattr(sender, "app", None), "amqp", None)
    names = sorted((queues.queues.consume_from or {}) if queues is not None else ())
    for name in groups_check_credentials(names=names, worker=worker_id()):
        logger.error("cannot decrypt the credentials of group %s with this box's SCHEDULER_ENCRYPTION_KEY: the group "
                     "is quarantined until the keys agree and an operator resumes it", name)
