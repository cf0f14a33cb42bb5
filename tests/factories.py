"""factory_boy factories for the models (real database rows)."""

from __future__ import annotations

import itertools

import factory

from tasks_app.models import Task, TaskStatus, Tool, WorkerGroup
from tasks_app.services.workers import worker_heartbeat

_pids = itertools.count(10_000)


def live_worker(*queues: str, hostname: str | None = None) -> str:
    """Register a live worker consuming `queues` (as a real worker's heartbeat would), for tests that dispatch
    without starting worker processes. Returns its node name."""
    hostname = hostname or f"test-{'-'.join(queues) or 'idle'}@box"
    worker_heartbeat(hostname=hostname, pid=next(_pids), queues=queues, concurrency=1, sandbox="off")
    return hostname


class WorkerGroupFactory(factory.django.DjangoModelFactory):
    """A group with a live worker on its queue (`live=False`: none, so it gets no leases)."""

    class Meta:
        model = WorkerGroup
        django_get_or_create = ("name",)
        skip_postgeneration_save = True

    tool = Tool.CLAUDE
    account = factory.Sequence(lambda n: f"acct{n}")
    name = factory.LazyAttribute(lambda g: f"{g.tool}-{g.account}")
    max_concurrent = 1
    enabled = True

    @factory.post_generation
    def live(self, create: bool, extracted: bool | None, **kwargs: object) -> None:
        if create and extracted is not False:
            live_worker(self.name)


class TaskFactory(factory.django.DjangoModelFactory):
    """A bare queued row. Prefer `task_create` in tests about creation; this is for dispatch/run set-ups."""

    class Meta:
        model = Task

    tool = Tool.CLAUDE
    prompt = factory.Sequence(lambda n: f"job {n}")
    status = TaskStatus.QUEUED
    timeout_seconds = 60
