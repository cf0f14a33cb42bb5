"""factory_boy factories for the models (real database rows)."""

from __future__ import annotations

import factory

from tasks_app.models import Task, TaskStatus, Tool, WorkerGroup


class WorkerGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkerGroup
        django_get_or_create = ("name",)

    tool = Tool.CLAUDE
    account = factory.Sequence(lambda n: f"acct{n}")
    name = factory.LazyAttribute(lambda g: f"{g.tool}-{g.account}")
    max_concurrent = 1
    enabled = True


class TaskFactory(factory.django.DjangoModelFactory):
    """A bare queued row. Prefer `task_create` in tests about creation; this is for dispatch/run set-ups."""

    class Meta:
        model = Task

    tool = Tool.CLAUDE
    prompt = factory.Sequence(lambda n: f"job {n}")
    status = TaskStatus.QUEUED
    timeout_seconds = 60
