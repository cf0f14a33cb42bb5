"""The audit trail on its own pages: runs, files, events and live log chunks, all read-only."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from tasks_app.admin.common import ReadOnlyAdminMixin, _download_link, _task_link
from tasks_app.admin.tasks import RUN_FIELDS, FailureKindFilter, TaskRunInline
from tasks_app.models import RunEvent, TaskEvent, TaskFile, TaskLogChunk, TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "task_link", "attempt", "status", "worker_group", "worker", "failure_kind",
                    "exit_code", "started_at", "finished_at", "latency_ms", "cost_usd")
    list_filter = ("status", FailureKindFilter, "worker_group", "started_at")
    search_fields = ("task__id", "task__prompt", "worker", "celery_task_id")
    list_select_related = ("task", "worker_group")
    ordering = ("-started_at",)
    date_hierarchy = "started_at"
    fields = (("task_link", *RUN_FIELDS[0]), *RUN_FIELDS[1:])
    readonly_fields = ("task_link", "change_summary", "command_line", "stdout_block", "stderr_block")

    @admin.display(description="task", ordering="task__created_at")
    def task_link(self, run: TaskRun) -> SafeString:
        return _task_link(run.task_id)

    change_summary = TaskRunInline.change_summary
    command_line = TaskRunInline.command_line
    stdout_block = TaskRunInline.stdout_block
    stderr_block = TaskRunInline.stderr_block


@admin.register(TaskFile)
class TaskFileAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("path", "task_link", "direction", "size_bytes", "content_type", "created_at", "download")
    list_filter = ("direction", "content_type", "created_at")
    search_fields = ("path", "task__id", "sha256")
    list_select_related = ("task",)
    ordering = ("-created_at",)
    fields = ("task_link", "run", "direction", "path", "size_bytes", "sha256", "content_type", "created_at",
              "download")
    readonly_fields = ("task_link", "download")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskFile]:
        return super().get_queryset(request).defer("content")

    @admin.display(description="task", ordering="task__created_at")
    def task_link(self, item: TaskFile) -> SafeString:
        return _task_link(item.task_id)

    @admin.display(description="download")
    def download(self, item: TaskFile) -> SafeString:
        return _download_link(item)


@admin.register(TaskEvent)
class TaskEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "task_link", "from_status", "to_status", "source", "actor", "reason")
    list_filter = ("source", "to_status", "created_at")
    search_fields = ("task__id", "actor", "reason")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    fields = ("task_link", "from_status", "to_status", "source", "actor", "reason", "data", "created_at")
    readonly_fields = ("task_link",)

    @admin.display(description="task")
    def task_link(self, event: TaskEvent) -> SafeString:
        return _task_link(event.task_id)


@admin.register(TaskLogChunk)
class TaskLogChunkAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Live output as the workers flushed it (pruned after SCHEDULER_LIVE_LOG_RETENTION_HOURS)."""

    list_display = ("run", "seq", "stream", "excerpt", "created_at")
    list_filter = ("stream", "created_at")
    list_select_related = ("run",)
    search_fields = ("run__task__id",)
    ordering = ("-created_at", "-seq")

    @admin.display(description="data")
    def excerpt(self, chunk: TaskLogChunk) -> str:
        return chunk.data[:120]


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Each run's timeline as the workers read it from the CLI's stream (pruned with the live logs)."""

    list_display = ("run", "seq", "kind", "summary", "created_at")
    list_filter = ("kind", "created_at")
    list_select_related = ("run",)
    search_fields = ("run__task__id",)
    ordering = ("-created_at", "-seq")

    @admin.display(description="data")
    def summary(self, event: RunEvent) -> str:
        return str(event.data)[:120]
