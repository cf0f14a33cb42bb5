"""API views: thin. Parse with a serializer, call one service or selector, present the result."""

from __future__ import annotations

import posixpath
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404
from django.utils.http import content_disposition_header
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotAcceptable, ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from tasks_app import selectors
from tasks_app.api.filters import TaskFilter
from tasks_app.api.follow import follow_response
from tasks_app.api.renderers import EventStreamRenderer
from tasks_app.api.schema import ERROR_SCHEMA
from tasks_app.api.serializers import (
    AuditEventSerializer,
    FollowUpSerializer,
    LogQuerySerializer,
    RepositorySerializer,
    RepositoryUpdateSerializer,
    RepositoryWriteSerializer,
    ScheduleSerializer,
    ScheduleWriteSerializer,
    TaskCreateSerializer,
    TaskDetailSerializer,
    TaskEventSerializer,
    TaskFileSerializer,
    TaskLogSerializer,
    TaskRunSerializer,
    TaskSerializer,
    TimelineSerializer,
    WorkerGroupSerializer,
    WorkerGroupUpdateSerializer,
    WorkerSerializer,
)
from tasks_app.logstream import LOGS, TIMELINE, timeline_dict
from tasks_app.models import EventSource, Repository, Schedule, Task, TaskStatus
from tasks_app.services.accounts import user_tenant
from tasks_app.services.followups import task_follow_up
from tasks_app.services.groups import group_create, group_pause, group_resume, group_update
from tasks_app.services.repositories import repository_create, repository_delete, repository_update
from tasks_app.services.schedules import (
    ScheduleSpec,
    schedule_create,
    schedule_delete,
    schedule_fire,
    schedule_set_enabled,
    schedule_update,
)
from tasks_app.services.tasks import task_cancel, task_create, task_retry
from tasks_app.validation import tenant_name


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tasks_app.api.auth.ApiTokenAuthentication"
    name = "TokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <key>` or `Bearer <key>` (create one with `schedulerctl tokens create`)."}


class TaskCursorPagination(CursorPagination):
    """Cursor pagination: constant cost per page however deep the list (no OFFSET scans)."""

    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


def tenant_scope(request: Request) -> str | None:
    """The tenant whose rows this request may see; None for staff, who see all. A user of no tenant is refused
    (403), never shown the `default` tenant's rows."""
    if request.user.is_staff:
        return None
    if not request.user.is_authenticated:  # only drf-spectacular's schema walk gets here unauthenticated
        return ""
    return user_tenant(request.user)


_CONFLICT = OpenApiResponse(description="The task's status does not allow this.")


class TaskViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = TaskSerializer
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    filterset_class = TaskFilter
    ordering_fields = ["created_at", "priority"]
    ordering = ["-created_at"]
    pagination_class = TaskCursorPagination
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self) -> QuerySet[Task]:
        return selectors.task_list(tenant=tenant_scope(self.request))

    def get_serializer_class(self) -> type:
        return TaskDetailSerializer if self.action == "retrieve" else TaskSerializer

    @extend_schema(
        request=TaskCreateSerializer,
        responses={201: TaskDetailSerializer, 200: TaskDetailSerializer,
                   409: OpenApiResponse(description="idempotency_key reused with a different body")},
        description="Create a task. The same idempotency_key with the same body returns the existing task (200).",
    )
    def create(self, request: Request) -> Response:
        serializer = TaskCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        task, created = task_create(spec=serializer.to_spec(), tenant=user_tenant(request.user),
                                    created_by=request.user.get_username(), source=EventSource.API)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(TaskDetailSerializer(task).data, status=code)

    @extend_schema(request=None, responses={200: TaskSerializer, 202: TaskSerializer, 409: _CONFLICT},
                   description="Cancel. Queued tasks end at once (200); running ones are killed by their worker (202).")
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        task = task_cancel(task_id=self.get_object().pk, source=EventSource.API, actor=request.user.get_username())
        code = status.HTTP_202_ACCEPTED if task.status == TaskStatus.RUNNING else status.HTTP_200_OK
        return Response(TaskSerializer(task).data, status=code)

    @extend_schema(request=None, responses={200: TaskSerializer, 409: _CONFLICT},
                   description="Re-queue a failed or canceled task with a fresh attempt budget.")
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        task = task_retry(task_id=self.get_object().pk, source=EventSource.API, actor=request.user.get_username())
        return Response(TaskSerializer(task).data)

    @extend_schema(request=FollowUpSerializer, responses={201: TaskDetailSerializer, 409: _CONFLICT},
                   description="Create the next turn: a task that resumes this finished task's CLI session on the "
                               "same account, from the state it left (its patch, on a repository).")
    @action(detail=True, methods=["post"], url_path="follow-up")
    def follow_up(self, request: Request, pk: str | None = None) -> Response:
        serializer = FollowUpSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        task = task_follow_up(task_id=self.get_object().pk, prompt=serializer.validated_data["prompt"],
                              created_by=request.user.get_username(), source=EventSource.API)
        return Response(TaskDetailSerializer(task).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=TaskRunSerializer(many=True), description="Attempts, newest first.")
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def runs(self, request: Request, pk: str | None = None) -> Response:
        runs = selectors.task_runs(task_id=self.get_object().pk)
        return Response(TaskRunSerializer(runs, many=True).data)

    @extend_schema(responses=TaskEventSerializer(many=True), description="Status audit trail, oldest first.")
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def events(self, request: Request, pk: str | None = None) -> Response:
        events = selectors.task_events(task_id=self.get_object().pk)
        return Response(TaskEventSerializer(events, many=True).data)

    @extend_schema(responses=TaskFileSerializer(many=True), description="Input and output files (metadata).")
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def files(self, request: Request, pk: str | None = None) -> Response:
        files = selectors.task_files(task_id=self.get_object().pk)
        return Response(TaskFileSerializer(files, many=True).data)

    def _follow_or_after(self, request: Request, task: Task, *, feed: str) -> tuple[int, HttpResponseBase | None]:
        """`?follow=1`: the live stream of `feed`. Otherwise the sequence number to list from (`after`, or SSE's
        Last-Event-ID + 1)."""
        params = LogQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        after = params.validated_data["after"]
        last_event_id = request.headers.get("Last-Event-ID", "")
        if last_event_id.isdigit():
            after = int(last_event_id) + 1
        if params.validated_data["follow"]:
            return after, follow_response(request, task_id=task.pk, after=after, feed=feed)
        if isinstance(request.accepted_renderer, EventStreamRenderer):
            raise NotAcceptable("text/event-stream is served with follow=1 only; without it the answer is JSON.")
        return after, None

    @extend_schema(
        parameters=[
            OpenApiParameter("follow", bool, description="Stream as server-sent events until the task ends."),
            OpenApiParameter("after", int, description="Resume after this sequence number (SSE Last-Event-ID)."),
        ],
        responses={(200, "application/json"): TaskLogSerializer, (200, "text/event-stream"): OpenApiTypes.STR,
                   307: OpenApiResponse(description="follow=1 on the WSGI web process: the stream process's URL"),
                   421: OpenApiResponse(description="follow=1 on the WSGI web process, SCHEDULER_STREAM_URL unset"),
                   429: OpenApiResponse(description="follow=1 beyond the per-token or the global stream cap")},
        description="Live output of the latest attempt. `follow=1` streams it as server-sent events (stdout, stderr, "
                    "attempt, end, timeout; a keep-alive comment when quiet) from the stream process; the WSGI web "
                    "process answers it with a redirect there (307) or 421. 429 beyond the stream caps. Otherwise "
                    "the chunks so far, and the stored copies once the attempt has finished.",
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[],
            renderer_classes=[*api_settings.DEFAULT_RENDERER_CLASSES, EventStreamRenderer])
    def logs(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        task = self.get_object()
        after, stream = self._follow_or_after(request, task, feed=LOGS)
        if stream is not None:
            return stream
        run = selectors.task_latest_run(task_id=task.pk)
        chunks = selectors.run_log_chunks(run_id=run.pk, after=after, limit=10_000) if run else []
        return Response(TaskLogSerializer({
            "attempt": run.attempt if run else None,
            "finished": bool(run and run.finished_at),
            "chunks": chunks,
            "next_after": chunks[-1].seq + 1 if chunks else after,
            "stdout": run.stdout if run and run.finished_at else "",
            "stderr": run.stderr if run and run.finished_at else "",
        }).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("follow", bool, description="Stream as server-sent events (one per RunEvent) until the "
                                                         "task ends."),
            OpenApiParameter("after", int, description="From this sequence number on (SSE Last-Event-ID + 1)."),
        ],
        responses={(200, "application/json"): TimelineSerializer, (200, "text/event-stream"): OpenApiTypes.STR,
                   307: OpenApiResponse(description="follow=1 on the WSGI web process: the stream process's URL"),
                   421: OpenApiResponse(description="follow=1 on the WSGI web process, SCHEDULER_STREAM_URL unset"),
                   429: OpenApiResponse(description="follow=1 beyond the per-token or the global stream cap")},
        description="What the agent does in the latest attempt, read from its CLI's stream: message, tool_call, "
                    "tool_result, usage, rate_limit, error, result (SPEC §8 RunEvent). `follow=1` streams it as "
                    "server-sent events (each event's data: its JSON object; attempt, end and timeout as for logs) "
                    "from the stream process.",
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[],
            renderer_classes=[*api_settings.DEFAULT_RENDERER_CLASSES, EventStreamRenderer])
    def timeline(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        task = self.get_object()
        after, stream = self._follow_or_after(request, task, feed=TIMELINE)
        if stream is not None:
            return stream
        run = selectors.task_latest_run(task_id=task.pk)
        events = selectors.run_events(run_id=run.pk, after=after) if run else []
        return Response(TimelineSerializer({
            "attempt": run.attempt if run else None,
            "finished": bool(run and run.finished_at),
            "session_id": run.session_id if run else "",
            "cost_usd": float(run.cost_usd) if run and run.cost_usd is not None else None,
            "cost_is_estimate": bool(run and run.cost_is_estimate),
            "events": [timeline_dict(e) for e in events],
            "next_after": events[-1].seq + 1 if events else after,
        }).data)

    @extend_schema(responses={(200, "*/*"): OpenApiTypes.BINARY},
                   description="Raw bytes, with the file's Content-Type and an attachment Content-Disposition.")
    @action(detail=True, methods=["get"], url_path=r"files/(?P<file_id>[0-9]{1,18})/content",
            pagination_class=None, filter_backends=[])
    def file_content(self, request: Request, pk: str | None = None, file_id: str | None = None) -> HttpResponse:
        item = get_object_or_404(selectors.task_files(task_id=self.get_object().pk), pk=int(file_id or 0))
        filename = posixpath.basename(item.path)
        if item.content is not None:
            response = HttpResponse(bytes(item.content), content_type=item.content_type)
            # The CLI chose the name: Django's builder escapes quotes and encodes anything else (RFC 6266).
            response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
            return response
        return FileResponse(item.file.open("rb"), as_attachment=True, filename=filename,
                            content_type=item.content_type)


class ScheduleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Schedules of the caller's tenant (staff: all). Exactly one timing: cron + timezone, interval, or run_at."""

    serializer_class = ScheduleSerializer
    pagination_class = None
    lookup_value_regex = "[0-9]{1,18}"

    def get_queryset(self) -> QuerySet[Schedule]:
        return selectors.schedule_list(tenant=tenant_scope(self.request))

    @extend_schema(request=ScheduleWriteSerializer, responses={201: ScheduleSerializer})
    def create(self, request: Request) -> Response:
        serializer = ScheduleWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        schedule = schedule_create(spec=ScheduleSpec(**serializer.changes()), tenant=user_tenant(request.user),
                                   created_by=request.user.get_username())
        return Response(ScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ScheduleWriteSerializer, responses=ScheduleSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        schedule = self.get_object()
        serializer = ScheduleWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        schedule = schedule_update(schedule_id=schedule.pk, changes=serializer.changes())
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(responses={204: None}, description="Delete the definition; the tasks it spawned stay.")
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        schedule_delete(schedule_id=self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        return Response(ScheduleSerializer(schedule_set_enabled(schedule_id=self.get_object().pk, enabled=False)).data)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return Response(ScheduleSerializer(schedule_set_enabled(schedule_id=self.get_object().pk, enabled=True)).data)

    @extend_schema(request=None, responses={201: TaskDetailSerializer},
                   description="Fire once now (also when paused); the timing is unchanged.")
    @action(detail=True, methods=["post"])
    def trigger(self, request: Request, pk: str | None = None) -> Response:
        firing = schedule_fire(schedule_id=self.get_object().pk, source="trigger", actor=request.user.get_username())
        if firing is None or firing.task is None:
            return Response({"detail": "this instant was already fired; try again"}, status=status.HTTP_409_CONFLICT)
        return Response(TaskDetailSerializer(firing.task).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=TaskSerializer(many=True), description="The tasks it spawned, newest first.")
    @action(detail=True, methods=["get"], pagination_class=TaskCursorPagination)
    def tasks(self, request: Request, pk: str | None = None) -> Response:
        page = self.paginate_queryset(selectors.schedule_tasks(schedule=self.get_object()))
        return self.get_paginated_response(TaskSerializer(page, many=True).data)


class WorkerGroupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Worker groups (staff only). Credentials are write-only; responses show their key names."""

    permission_classes = [IsAdminUser]
    serializer_class = WorkerGroupSerializer
    lookup_field = "name"
    lookup_value_regex = "[a-z0-9-]{1,100}"
    pagination_class = None

    def get_queryset(self) -> QuerySet:
        return selectors.group_list()

    def list(self, request: Request) -> Response:
        groups = selectors.groups_attach_live_workers(self.filter_queryset(self.get_queryset()))
        return Response(self.get_serializer(groups, many=True).data)

    @extend_schema(request=WorkerGroupSerializer, responses={201: WorkerGroupSerializer})
    def create(self, request: Request) -> Response:
        serializer = WorkerGroupSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        group = group_create(**serializer.validated_data, by=request.user)
        return Response(self._present(group.name), status=status.HTTP_201_CREATED)

    @extend_schema(request=WorkerGroupUpdateSerializer, responses=WorkerGroupSerializer)
    def partial_update(self, request: Request, name: str | None = None) -> Response:
        group = self.get_object()
        serializer = WorkerGroupUpdateSerializer(group, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        group_update(name=group.name, changes=dict(serializer.validated_data), by=request.user)
        return Response(self._present(group.name))

    @extend_schema(request=None, responses=WorkerGroupSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, name: str | None = None) -> Response:
        group_pause(name=self.get_object().name)
        return Response(self._present(name))

    @extend_schema(request=None, responses=WorkerGroupSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, name: str | None = None) -> Response:
        group_resume(name=self.get_object().name)
        return Response(self._present(name))

    def _present(self, name: str | None) -> dict[str, Any]:
        return WorkerGroupSerializer(selectors.group_list().get(name=name)).data


_TENANT_PARAMETER = OpenApiParameter(
    "tenant", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
    description="Only this tenant's (staff: any tenant; others see only their own). A repository's name is unique "
                "within its tenant: staff name another tenant than their own here.")


_BAD_TENANT = OpenApiResponse(ERROR_SCHEMA, description="`tenant` is not a tenant's name. Nothing was changed.")


@extend_schema_view(list=extend_schema(parameters=[_TENANT_PARAMETER]),
                    retrieve=extend_schema(parameters=[_TENANT_PARAMETER]))
class RepositoryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Git repositories tasks run on (SPEC §8), by name within a tenant. Everyone sees their tenant's; staff see every
    tenant's and create, change and delete them, as they manage worker groups. Credentials are write-only."""

    serializer_class = RepositorySerializer
    lookup_field = "name"
    lookup_value_regex = "[A-Za-z0-9][A-Za-z0-9_-]{0,99}"
    pagination_class = None
    filter_backends: list[Any] = []

    def get_permissions(self) -> list[BasePermission]:
        if self.action in ("create", "partial_update", "destroy"):
            return [IsAdminUser()]
        return super().get_permissions()

    def get_queryset(self) -> QuerySet[Repository]:
        scope = tenant_scope(self.request)
        wanted = self.request.query_params.get("tenant")
        if wanted is not None:
            tenant_name(wanted)  # a 400 naming the rule, never a NUL byte in a query
        if scope is None and self.action != "list":
            scope = wanted or user_tenant(self.request.user)  # one object: a name is unique only within a tenant
        repositories = selectors.repository_list(tenant=scope)
        return repositories.filter(tenant=wanted) if wanted is not None else repositories

    @extend_schema(request=RepositoryWriteSerializer, responses={201: RepositorySerializer},
                   description="Create (staff). `tenant`: another tenant than yours. Setting credentials needs the "
                               "permission tasks_app.manage_credentials.")
    def create(self, request: Request) -> Response:
        serializer = RepositoryWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        tenant = data.pop("tenant", None) or user_tenant(request.user)
        repository = repository_create(tenant=tenant, **data, created_by=request.user.get_username(),
                                       by=request.user)
        return Response(RepositorySerializer(repository).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=RepositoryUpdateSerializer, responses=RepositorySerializer, parameters=[_TENANT_PARAMETER],
                   description="Change (staff). Credentials are replaced as a whole ({} or null removes them); "
                               "setting them, or changing the url or push_prefix of a repository that has some, needs "
                               "the permission tasks_app.manage_credentials.")
    def partial_update(self, request: Request, name: str | None = None) -> Response:
        repository = self.get_object()
        serializer = RepositoryUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        repository = repository_update(tenant=repository.tenant, name=repository.name,
                                       changes=dict(serializer.validated_data), by=request.user)
        return Response(RepositorySerializer(repository).data)

    @extend_schema(responses={204: None, 400: _BAD_TENANT,
                              409: OpenApiResponse(description="Tasks refer to it (the count is named).")},
                   parameters=[_TENANT_PARAMETER],
                   description="Delete (staff) a repository no task refers to; tasks keep theirs for their history.")
    def destroy(self, request: Request, name: str | None = None) -> Response:
        repository = self.get_object()
        repository_delete(tenant=repository.tenant, name=repository.name)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[
    OpenApiParameter("alive", bool, description="Only live (true) or only stopped and silent (false) workers."),
    OpenApiParameter("queue", str, description="Only workers consuming this queue (a group's name, or control)."),
])
class WorkerViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Registered Celery workers and their heartbeats (staff only). A worker silent for
    SCHEDULER_WORKER_TIMEOUT_SECONDS is not alive; its groups get no leases until one is."""

    permission_classes = [IsAdminUser]
    serializer_class = WorkerSerializer
    pagination_class = None

    def get_queryset(self) -> QuerySet:
        params = self.request.query_params
        alive = params.get("alive")
        if alive not in (None, "true", "false", "1", "0"):
            raise ValidationError({"alive": ["must be true or false"]})
        return selectors.worker_list(alive=None if alive is None else alive in ("true", "1"),
                                     queue=params.get("queue") or None)


class AuditCursorPagination(TaskCursorPagination):
    ordering = ("-created_at", "-id")


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Every change to groups, repositories, credentials (key names only), schedules, tokens and users (staff only):
    who, from where (api, admin, cli, system), what, which fields, when. Never a secret value."""

    permission_classes = [IsAdminUser]
    serializer_class = AuditEventSerializer
    pagination_class = AuditCursorPagination
    filter_backends = [DjangoFilterBackend]
    filterset_fields = ["object_type", "object_id", "actor", "source", "action"]

    def get_queryset(self) -> QuerySet:
        return selectors.audit_list()
