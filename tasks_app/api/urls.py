from __future__ import annotations

from rest_framework.routers import DefaultRouter

from tasks_app.api.views import ScheduleViewSet, TaskViewSet, WorkerGroupViewSet

router = DefaultRouter(trailing_slash=True)
router.register("tasks", TaskViewSet, basename="task")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("worker-groups", WorkerGroupViewSet, basename="worker-group")

urlpatterns = router.urls
