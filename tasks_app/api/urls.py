from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from tasks_app.api.intake import IntakeView
from tasks_app.api.usage import UsageView
from tasks_app.api.views import (
    AuditEventViewSet,
    RepositoryViewSet,
    ScheduleViewSet,
    TaskViewSet,
    WorkerGroupViewSet,
    WorkerViewSet,
)

router = DefaultRouter(trailing_slash=True)
router.register("tasks", TaskViewSet, basename="task")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("repositories", RepositoryViewSet, basename="repository")
router.register("worker-groups", WorkerGroupViewSet, basename="worker-group")
router.register("workers", WorkerViewSet, basename="worker")
router.register("audit", AuditEventViewSet, basename="audit")

urlpatterns = [*router.urls, path("intake/", IntakeView.as_view(), name="intake"),
               path("usage/", UsageView.as_view(), name="usage")]
