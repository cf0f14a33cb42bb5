"""The stream process's entry point (Procfile `stream`: uvicorn): the whole site, for the live streams of
`?follow=1` above all (tasks_app/streams.py); the embedded one-command start serves everything from it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

# Under ASGI every request's synchronous code runs on a thread of its own, so a connection kept for reuse would
# never be reused and would stay open until that thread is collected (Django #33497): one connection per request.
os.environ["DB_CONN_MAX_AGE"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

Message = MutableMapping[str, Any]
Asgi = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                Awaitable[None]]


class PreparingLimit:
    """At most `limit` requests of this process between their arrival and their first response byte.

    That is when a request holds a thread and a database connection (auth, the task, the admission); a live stream
    then gives both back and only waits on the event loop, so it stops counting. Without the limit, a few hundred
    followers arriving at once would open as many connections as there are followers (beyond PostgreSQL's
    max_connections); with it they queue here, on the event loop, for a few milliseconds each."""

    def __init__(self, app: Asgi, limit: int) -> None:
        self.app, self.limit = app, limit
        self._semaphore: asyncio.Semaphore | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        semaphore = self._semaphore
        await semaphore.acquire()
        held = True

        async def send_then_release(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and held:
                held = False
                semaphore.release()
            await send(message)

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            if held:
                semaphore.release()


application: Asgi = get_asgi_application()
if settings.SCHEDULER_SERVE_STATIC:
    application = ASGIStaticFilesHandler(application)
application = PreparingLimit(application, settings.SCHEDULER_ASGI_THREADS)
