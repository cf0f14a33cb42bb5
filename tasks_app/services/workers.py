"""Worker registration and heartbeats (SPEC §8 `Worker`), and the tick's own heartbeat.

A worker process writes one row, keyed by its Celery node name and pid, and renews `last_heartbeat` (with the
database's clock) while it is connected to the broker. The dispatcher leases only to groups whose queue a live
worker consumes, so a group added while the stack runs, or whose box is down, holds its tasks `queued` and says
`no_worker` instead of taking leases that expire and come back for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction
from django.db.models.functions import Now

from tasks_app.models import Heartbeat, Worker
from tasks_app.services.enqueue import enqueue_dispatch

logger = logging.getLogger(__name__)

WORKER_RETENTION = timedelta(days=7)


def worker_heartbeat(*, hostname: str, pid: int, queues: Sequence[str], concurrency: int = 0,
                     sandbox: str = "") -> bool:
    """Register the worker or renew its heartbeat. Returns True when it has just become a live consumer of
    `queues` (new, back after silence, or consuming other queues): a dispatch pass is then asked for, so work
    waiting for it starts now rather than at the next tick."""
    queues = sorted(set(queues))
    fields = {"queues": queues, "concurrency": concurrency, "sandbox": sandbox, "last_heartbeat": Now(),
              "stopped_at": None}
    # The common case, every few seconds from every worker: one UPDATE of a row that is live with these queues.
    if Worker.objects.live().filter(hostname=hostname, pid=pid, queues=queues).update(**fields):
        return False
    with transaction.atomic():
        before = Worker.objects.live().filter(hostname=hostname, pid=pid).values_list("queues", flat=True).first()
        if not Worker.objects.filter(hostname=hostname, pid=pid).update(**fields):
            Worker.objects.create(hostname=hostname, pid=pid, **fields)
        became_live = before is None or sorted(before) != queues
        if became_live:
            enqueue_dispatch()
    if became_live:
        logger.info("worker %s (pid %d) is live, consuming %s", hostname, pid, ", ".join(queues) or "nothing")
    return became_live


def worker_stopped(*, hostname: str, pid: int) -> None:
    """A clean shutdown: the worker stops counting as a consumer at once, not a heartbeat timeout later."""
    Worker.objects.filter(hostname=hostname, pid=pid, stopped_at__isnull=True).update(stopped_at=Now())


def workers_prune() -> int:
    """Forget workers silent for longer than WORKER_RETENTION (boxes long gone)."""
    deleted, _ = Worker.objects.filter(last_heartbeat__lt=Now() - WORKER_RETENTION).delete()
    return deleted


def tick_heartbeat() -> None:
    """The periodic tick ran (beat sent it and a control worker executed it): what /healthz reports as `beat`."""
    if not Heartbeat.objects.filter(name=Heartbeat.TICK).update(at=Now()):
        Heartbeat.objects.get_or_create(name=Heartbeat.TICK, defaults={"at": Now()})
