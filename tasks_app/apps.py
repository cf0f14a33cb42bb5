from __future__ import annotations

from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "CLI Scheduler"
    default_auto_field = "django.db.models.BigAutoField"
