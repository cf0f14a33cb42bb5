"""The only module of the domain that talks to the broker.

Messages are sent by task *name* (`send_task`), never by importing the Celery tasks: the domain knows what it
asks for, `workers.tasks` knows how it is done, and the web process never imports the worker's code. Every send
waits for the current transaction to commit (`transaction.on_commit` runs it at once outside one), so a worker
never receives an id whose row it cannot see yet. A test checks that each name here is registered on the app.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import current_app
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)
BROKER_ERRORS = (OperationalError, OSError)

DISPATCH = "workers.dispatch"
EXECUTE_RUN = "workers.execute_run"
FIRE_SCHEDULE = "workers.fire_schedule"
TICK = "workers.tick"
TASK_NAMES = (DISPATCH, EXECUTE_RUN, FIRE_SCHEDULE, TICK)

CONTROL_QUEUE = "control"
# ETA wake-ups further away than this are left to the tick: an ETA message sits in a worker's memory until due.
ETA_WAKEUP_HORIZON = timedelta(hours=1)


@dataclass(frozen=True)
class Lease:
    """A queued task leased to a group: one execute message to the group's queue."""

    task_id: uuid.UUID
    lease_token: uuid.UUID
    queue: str


def enqueue_dispatch(*, at: datetime | None = None) -> None:
    """Ask the control queue for a dispatch pass, after commit (so the pass sees the new rows).

    With `at` (a task's scheduled_at or retry time) the pass is asked for at that moment, so the task starts on
    time rather than at the next safety-net tick. Only a dispatch message carries an ETA, never an execute
    message: a dispatch pass is idempotent, so an ETA message lost or redelivered by the broker costs nothing.
    """
    transaction.on_commit(lambda: _send_nudge(DISPATCH, [], at))


def enqueue_schedule_fire(*, schedule_id: int, at: datetime) -> None:
    """Wake a schedule at `at`, after commit. For a wake-up that came early (a jittery control queue, beat's
    crontab misfiring around DST): its slot still fires on time, not a whole interval later. A slot fires once
    however many wake-ups arrive (the firing row is unique)."""
    transaction.on_commit(lambda: _send_nudge(FIRE_SCHEDULE, [schedule_id], at))


def _send_nudge(name: str, args: list[object], at: datetime | None) -> None:
    delay = (at - timezone.now()) if at is not None else None
    if delay is not None and delay > ETA_WAKEUP_HORIZON:
        return
    eta = at if delay is not None and delay.total_seconds() > 0 else None
    try:
        # No publish retries: this is a nudge, and a producer (an API request) must not wait on a broker that is
        # down. Missing it costs at most one tick (SCHEDULER_TICK_SECONDS), or beat's next wake-up.
        current_app.send_task(name, args=args, queue=CONTROL_QUEUE, eta=eta, retry=False)
    except BROKER_ERRORS as exc:
        logger.warning("broker unreachable (%s): %s not sent; the next tick catches up", type(exc).__name__, name)


def enqueue_executions(leases: Iterable[Lease]) -> None:
    """One execute message per lease to its group's queue, after commit, all over one producer connection."""
    leases = list(leases)
    if leases:
        transaction.on_commit(lambda: _send_executions(leases))


def _send_executions(leases: list[Lease]) -> None:
    try:
        with current_app.producer_or_acquire() as producer:
            for lease in leases:
                current_app.send_task(EXECUTE_RUN, args=[str(lease.task_id), str(lease.lease_token)],
                                      queue=lease.queue, producer=producer)
    except BROKER_ERRORS as exc:
        # Leased but never sent: the leases expire and the reconciler puts the tasks back in the queue.
        logger.warning("broker unreachable (%s): %d lease(s) will expire and be retried", type(exc).__name__,
                       len(leases))


def broker_check(*, timeout: float = 2.0) -> None:
    """Connect to the broker once; raises what the connection raises (for /healthz)."""
    with current_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
