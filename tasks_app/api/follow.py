"""`?follow=1` of the logs endpoint: a stream from the stream process (ASGI), a pointer to it from the WSGI one."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpResponseBase, StreamingHttpResponse
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response

from tasks_app.logstream import LOGS
from tasks_app.models import ApiToken
from tasks_app.streams import STREAM_SLOTS, event_stream


class TooManyStreams(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_streams"
    wait = 10  # Retry-After: a stream usually lasts minutes; there is no exact time to give


def follow_response(request: Request, *, task_id: Any, after: int, feed: str = LOGS) -> HttpResponseBase:
    if not isinstance(request._request, ASGIRequest):
        return _served_elsewhere(request)
    client = f"token:{request.auth.pk}" if isinstance(request.auth, ApiToken) else f"user:{request.user.pk}"
    slot = STREAM_SLOTS.acquire(client, per_key_limit=settings.SCHEDULER_SSE_MAX_STREAMS_PER_TOKEN,
                                total_limit=settings.SCHEDULER_SSE_MAX_STREAMS)
    if isinstance(slot, str):
        raise TooManyStreams(f"Too many live streams: {slot}. Close one (or wait for one to end) and retry.")
    # Under ASGI this view ran on a thread of its own, whose connection would otherwise stay open as long as the
    # stream (one per follower, for up to an hour). The stream reads through the hub's single connection.
    connection.close()
    stream = slot.bind(event_stream(
        task_id, after=after, slot=slot, max_seconds=settings.SCHEDULER_SSE_MAX_SECONDS,
        keepalive_seconds=settings.SCHEDULER_SSE_KEEPALIVE_SECONDS, poll_seconds=settings.SCHEDULER_SSE_POLL_SECONDS,
        feed=feed,
    ))
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let nginx pass events through as they come
    return response


def _served_elsewhere(request: Request) -> Response:
    """A WSGI thread never holds a stream: redirect to the stream process, or say where streams are served."""
    if settings.SCHEDULER_STREAM_URL:
        location = settings.SCHEDULER_STREAM_URL + request.get_full_path()
        return Response({"detail": f"Live streams are served by the stream process: {location}",
                         "stream_url": location}, status=status.HTTP_307_TEMPORARY_REDIRECT,
                        headers={"Location": location})
    return Response({"detail": "Live streams (follow=1) are served by the stream process (the Procfile's `stream`, "
                               "an ASGI server), not by this WSGI web process: send the request to it, or set "
                               "SCHEDULER_STREAM_URL so that this process redirects there."},
                    status=status.HTTP_421_MISDIRECTED_REQUEST)
