"""Celery tasks: thin. They take ids, call services, and are safe to receive twice."""

from __future__ import annotations

import logging
import os
import socket
import time

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import close_old_connections

from tasks_app.logformat import log_context
from tasks_app.services.dispatch import Lease, dispatch_runnable
from tasks_app.services.runs import (
    RunContext,
    leases_reconcile,
    run_check,
    run_finish,
    run_heartbeat,
    run_log_append,
    run_logs_prune,
    run_start,
)
from workers.executors import ConfigurationError, Control, ExecutionResult, execute
from workers.spec import execution_spec

logger = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Early ack (settings): a lost run is recovered by the lease and the reconciler, never by redelivery.
@shared_task(bind=True, name="workers.execute_run", ignore_result=True)
def execute_run_task(self, task_id: str, lease_token: str) -> None:
    worker = worker_id()
    with log_context(task_id=task_id):
        ctx = run_start(task_id=task_id, lease_token=lease_token, worker=worker, celery_task_id=self.request.id or "")
        if ctx is None:
            return  # duplicate or late delivery: the lease moved on
        with log_context(run_id=ctx.run_id, group=ctx.group_name, attempt=ctx.attempt):
            logger.info("attempt %d of %s started on %s", ctx.attempt, ctx.tool, ctx.group_name)
            _execute(ctx, worker)


def _execute(ctx: RunContext, worker: str) -> None:
    try:
        spec = execution_spec(ctx)
    except ConfigurationError as exc:
        result = ExecutionResult(command=[], failure_kind="internal", error_message=str(exc))
    else:
        renew_every = max(1.0, settings.SCHEDULER_LEASE_SECONDS / 4)
        renewed_at = time.monotonic()

        def heartbeat() -> Control:
            # Called every SCHEDULER_CANCEL_POLL_SECONDS from the executor's wait loop, in this thread: a cheap
            # read notices a cancel within seconds; the lease itself is renewed (a write) less often.
            nonlocal renewed_at
            close_old_connections()
            if time.monotonic() - renewed_at >= renew_every:
                renewed_at = time.monotonic()
                return run_heartbeat(task_id=ctx.task_id, lease_token=ctx.lease_token)
            return run_check(task_id=ctx.task_id, lease_token=ctx.lease_token)

        next_seq = 0

        def on_output(chunks: list[tuple[str, str]]) -> None:
            nonlocal next_seq
            next_seq = run_log_append(run_id=ctx.run_id, chunks=chunks, first_seq=next_seq)

        close_old_connections()  # hold no idle DB connection state across a long CLI run
        result = execute(spec, heartbeat=heartbeat, on_output=on_output)
    logger.info("attempt %d finished: %s", ctx.attempt, result.failure_kind or "succeeded")
    if run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, result=result, worker=worker) is not None:
        # Refill the freed slot now, from here: a round trip through the control queue would leave the slot
        # idle for tens of milliseconds per job. The dispatch lock keeps every cap exact wherever it runs.
        dispatch_runnable()


def send_execute(leases: list[Lease]) -> None:
    """One message per lease to its group's queue, all over one producer connection."""
    with execute_run_task.app.producer_or_acquire() as producer:
        for lease in leases:
            execute_run_task.apply_async(args=[str(lease.task_id), str(lease.lease_token)], queue=lease.queue,
                                         producer=producer)


@shared_task(name="workers.dispatch", ignore_result=True)
def dispatch_task() -> int:
    return len(dispatch_runnable())


@shared_task(name="workers.fire_schedule", ignore_result=True)
def fire_schedule_task(schedule_id: int) -> None:
    """Beat's wake-up for one schedule: fires it if (and only if) a slot is due."""
    from tasks_app.services.schedules import schedule_fire

    schedule_fire(schedule_id=schedule_id, source="beat")


@shared_task(name="workers.tick", ignore_result=True)
def tick_task() -> None:
    """Periodic safety net: recover expired leases, dispatch, prune the embedded broker's processed files."""
    leases_reconcile()
    dispatch_runnable()
    prune_processed_messages()
    run_logs_prune()


@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    from workers.maintenance import stale_work_dirs_remove

    stale_work_dirs_remove()


def prune_processed_messages(max_age_seconds: float = 600.0) -> int:
    folder = settings.EMBEDDED_BROKER_PROCESSED_DIR
    if not settings.CELERY_BROKER_URL.startswith("filesystem://") or not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_seconds
    removed = 0
    for entry in os.scandir(folder):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # another process pruned it first
    return removed
