"""The Celery app. Group workers consume one queue each (`-Q claude-main`); control consumes `control`."""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")

app = Celery("workers")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
# Registration and heartbeat while connected to the broker (by name: loaded once Django is set up).
app.steps["consumer"].add("workers.registry:Registration")


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_logs(logger: logging.Logger, **kwargs: object) -> None:
    from django.conf import settings

    if settings.LOG_FORMAT == "json":
        from tasks_app.logformat import use_json_formatter

        use_json_formatter(logger)
