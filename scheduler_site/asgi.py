"""The stream process's entry point (Procfile `stream`: uvicorn): the whole site, for the live streams of
`?follow=1` above all (tasks_app/streams.py); the embedded one-command start serves everything from it."""

from __future__ import annotations

import os

# Under ASGI every request's synchronous code runs on a thread of its own, so a connection kept for reuse would
# never be reused and would stay open until that thread is collected (Django #33497): one connection per request.
os.environ["DB_CONN_MAX_AGE"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

application = get_asgi_application()
if settings.SCHEDULER_SERVE_STATIC:
    application = ASGIStaticFilesHandler(application)
