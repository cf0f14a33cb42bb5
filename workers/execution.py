"""One attempt, from lease to result: the glue between the domain's run services and the executor.

Plain Python called by the Celery task: short transactions before and after, none while the CLI runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from executors import ConfigurationError, Control, ExecutionResult, FailureKind, RunEvent
from executors.base import LeaseClock
from executors.runner import execute
from tasks_app.logformat import log_context
from tasks_app.services.runs import (
    RunContext,
    run_check,
    run_events_append,
    run_finish,
    run_heartbeat,
    run_log_append,
    run_start,
)
from workers.spec import execution_spec

logger = logging.getLogger(__name__)
# Errors of a database that went away (restart, failover, a terminated connection), not of the query.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


def _drop_connection() -> None:
    """Forget the broken connection; the next query opens a new one. Closing a dead connection may raise, and
    Django forgets it all the same."""
    with contextlib.suppress(*TRANSIENT_DB_ERRORS):
        connection.close()


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
            return _record(ctx, result, worker, lease)


def _record(ctx: RunContext, result: ExecutionResult, worker: str, lease: LeaseClock) -> bool:
    """run_finish, retried through a database blip (a restart, a failover, a dropped connection) for as long as
    the lease can be kept: before each retry the lease is renewed, so the result of a finished CLI is not thrown
    away by a database that was gone for a few seconds. Gives up (the reconciler then retries the task) only when
    the lease can no longer be held."""
    delay = 0.2
    renew = False
    while True:
        started = time.monotonic()
        try:
            if renew:
                if run_heartbeat(task_id=ctx.task_id, lease_token=ctx.lease_token) is Control.LEASE_LOST:
                    logger.warning("the lease moved on before the result could be recorded; it is dropped")
                    return False
                lease.renewed(at=started)
            return run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, result=result, worker=worker) is not None
        except TRANSIENT_DB_ERRORS as exc:
            if time.monotonic() + delay >= lease.valid_until:
                logger.error("database unreachable until the lease ran out (%s): the result is lost", exc)
                return False
            logger.warning("database unreachable while recording the result (%s); retrying in %.1fs", exc, delay)
            _drop_connection()
            time.sleep(delay)
            delay, renew = min(delay * 2, 5.0), True


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
        try:
            if time.monotonic() - renewed_at >= renew_every:
                started = time.monotonic()
                control = run_heartbeat(task_id=ctx.task_id, lease_token=ctx.lease_token)
                renewed_at = started
                if control is not Control.LEASE_LOST:
                    lease.renewed(at=started)
                return control
            return run_check(task_id=ctx.task_id, lease_token=ctx.lease_token)
        except TRANSIENT_DB_ERRORS as exc:
            # A database blip is not the CLI's problem: it runs on. The lease is not renewed meanwhile, so if the
            # database stays away past the lease the supervisor kills the run before anyone can lease it again.
            logger.warning("database unreachable during the run (%s); the CLI goes on", exc)
            _drop_connection()
            return Control.CONTINUE

    next_seq = 0

    def on_output(chunks: list[tuple[str, str]]) -> None:
        nonlocal next_seq
        try:
            next_seq = run_log_append(run_id=ctx.run_id, chunks=chunks, first_seq=next_seq)
        except TRANSIENT_DB_ERRORS as exc:
            # Live output is a view while the run goes on; the run's own stdout/stderr are recorded at the end.
            logger.warning("database unreachable: %d live output chunk(s) not stored (%s)", len(chunks), exc)
            _drop_connection()

    next_event = 0

    def on_event(events: list[RunEvent]) -> None:
        nonlocal next_event
        try:
            next_event = run_events_append(run_id=ctx.run_id, events=events, first_seq=next_event)
        except TRANSIENT_DB_ERRORS as exc:
            # Like live output: the timeline is a view; the run's result is recorded at the end regardless.
            logger.warning("database unreachable: %d timeline event(s) not stored (%s)", len(events), exc)
            _drop_connection()

    close_old_connections()  # hold no idle DB connection state across a long CLI run
    return execute(spec, heartbeat=heartbeat, on_output=on_output, on_event=on_event, lease=lease)
