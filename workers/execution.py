"""One attempt, from lease to result: the glue between the domain's run services and the executor.

Plain Python called by the Celery task: short transactions before and after, none while the CLI runs.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from django.conf import settings
from django.db import close_old_connections

from executors import ConfigurationError, Control, ExecutionResult, FailureKind
from executors.base import LeaseClock
from executors.runner import execute
from tasks_app.logformat import log_context
from tasks_app.services.runs import (
    RunContext,
    run_check,
    run_finish,
    run_heartbeat,
    run_log_append,
    run_start,
)
from workers.spec import execution_spec

logger = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def attempt_run(*, task_id: str, lease_token: str, celery_task_id: str = "") -> bool:
    """Start the leased attempt, run the CLI, record the result. True when the result was recorded (a slot
    was freed); False for a duplicate or late message, or a result dropped because the lease moved on."""
    worker = worker_id()
    with log_context(task_id=task_id):
        lease = LeaseClock(settings.SCHEDULER_LEASE_SECONDS, renewed_at=time.monotonic())
        ctx = run_start(task_id=task_id, lease_token=lease_token, worker=worker, celery_task_id=celery_task_id,
                        sandbox=settings.SCHEDULER_SANDBOX)
        if ctx is None:
            return False  # duplicate or late delivery: the lease moved on
        with log_context(run_id=ctx.run_id, group=ctx.group_name, attempt=ctx.attempt):
            logger.info("attempt %d of %s started on %s", ctx.attempt, ctx.tool, ctx.group_name)
            result = _execute(ctx, lease)
            logger.info("attempt %d finished: %s", ctx.attempt, result.failure_kind or "succeeded")
            return run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, result=result, worker=worker) is not None


def _execute(ctx: RunContext, lease: LeaseClock) -> ExecutionResult:
    try:
        spec = execution_spec(ctx)
    except ConfigurationError as exc:
        return ExecutionResult(command=[], failure_kind=FailureKind.INTERNAL, error_message=str(exc))
    renew_every = max(1.0, settings.SCHEDULER_LEASE_SECONDS / 4)
    renewed_at = time.monotonic()

    def heartbeat() -> Control:
        # Called every SCHEDULER_CANCEL_POLL_SECONDS from the executor's wait loop, in this thread: a cheap read
        # notices a cancel within seconds; the lease itself is renewed (a write) less often, and each renewal
        # moves the supervisor's kill deadline (the runner reads `lease`).
        nonlocal renewed_at
        close_old_connections()
        if time.monotonic() - renewed_at >= renew_every:
            renewed_at = time.monotonic()
            control = run_heartbeat(task_id=ctx.task_id, lease_token=ctx.lease_token)
            if control is not Control.LEASE_LOST:
                lease.renewed(at=renewed_at)
            return control
        return run_check(task_id=ctx.task_id, lease_token=ctx.lease_token)

    next_seq = 0

    def on_output(chunks: list[tuple[str, str]]) -> None:
        nonlocal next_seq
        next_seq = run_log_append(run_id=ctx.run_id, chunks=chunks, first_seq=next_seq)

    close_old_connections()  # hold no idle DB connection state across a long CLI run
    return execute(spec, heartbeat=heartbeat, on_output=on_output, lease=lease)
