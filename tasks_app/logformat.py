"""Structured logs: one JSON object per line, with the job context (task_id, run_id, group, attempt) or the
web request id attached from a context variable, in web, control and group workers alike."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **{k: str(v) for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            **(_context.get() or {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json_formatter(logger: logging.Logger, **_: Any) -> None:
    """Celery's after_setup_logger hook: keep Celery's handlers (and its -f log file), format them as JSON."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


class RequestIdMiddleware:
    """Every request gets an id (the caller's X-Request-ID if sane), logged with it and echoed back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if given.isascii() and given.replace("-", "").isalnum() and len(given) <= 64 \
            else uuid.uuid4().hex
        with log_context(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
