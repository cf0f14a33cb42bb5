"""This worker's registration and heartbeat (SPEC §8 `Worker`), as a consumer bootstep.

The step starts with the consumer's connection to the broker and stops when it is lost, so a worker counts as a
live consumer exactly while it can receive messages: a box that is down, stopped (SIGSTOP), or cut off from the
broker stops heartbeating, and after SCHEDULER_WORKER_TIMEOUT_SECONDS its groups get no more leases. The beats
are written from a thread, so a slow or unreachable database never blocks the consumer's event loop; a failed
beat is retried at the next interval.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection

from tasks_app.services.workers import worker_heartbeat, worker_stopped

logger = logging.getLogger(__name__)


def _guarded(write: Callable[[], object], *, what: str, quiet: bool = False) -> bool:
    """Write to the database; on a database error log it (unless `quiet`), drop the connection so the next
    attempt reconnects, and return False."""
    try:
        write()
    except (DatabaseError, InterfaceError) as exc:
        if not quiet:
            logger.warning("%s failed (%s); retrying every %ss", what, type(exc).__name__,
                           settings.SCHEDULER_WORKER_HEARTBEAT_SECONDS)
        connection.close()
        return False
    return True


class _Beater(threading.Thread):
    def __init__(self, *, hostname: str, pid: int, queues: Callable[[], list[str]], concurrency: int) -> None:
        super().__init__(name="scheduler-worker-heartbeat", daemon=True)
        self.hostname, self.pid, self.queues, self.concurrency = hostname, pid, queues, concurrency
        self.halt = threading.Event()

    def run(self) -> None:
        failing = False
        try:
            while True:
                ok = _guarded(self._beat, what="worker heartbeat", quiet=failing)  # logged once per outage
                if ok and failing:
                    logger.info("worker heartbeat written again")
                failing = not ok
                if self.halt.wait(settings.SCHEDULER_WORKER_HEARTBEAT_SECONDS):
                    break
        finally:
            connection.close()

    def _beat(self) -> None:
        worker_heartbeat(hostname=self.hostname, pid=self.pid, queues=self.queues(), concurrency=self.concurrency,
                         sandbox=settings.SCHEDULER_SANDBOX)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


class Registration(bootsteps.StartStopStep):
    """Heartbeats while the consumer is connected; marks the worker stopped at a clean shutdown."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.beater: _Beater | None = None
        self.pid = os.getpid()

    def start(self, c: Any) -> None:
        def queues() -> list[str]:
            consumer = c.task_consumer
            return sorted(q.name for q in consumer.queues) if consumer is not None else []

        self._halt()
        self.beater = _Beater(hostname=c.hostname, pid=self.pid, queues=queues,
                              concurrency=int(getattr(c.controller, "concurrency", 0) or 0))
        self.beater.start()

    def stop(self, c: Any) -> None:
        self._halt()  # connection lost (or shutting down): no beats until connected again

    def shutdown(self, c: Any) -> None:
        self._halt()
        _guarded(lambda: worker_stopped(hostname=c.hostname, pid=self.pid), what="marking the worker stopped")
        connection.close()

    def _halt(self) -> None:
        if self.beater is not None:
            self.beater.stop()
            self.beater = None
