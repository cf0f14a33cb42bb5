"""Who is changing the configuration, from where: set once per request or command, read by the services when they
write an AuditEvent (SPEC §8). The services take no actor argument for this: the entry point says who is acting
(`AuditMiddleware` for the API and the admin, `schedulerctl` for the command line), and anything else (beat, a
worker, a migration) is the system."""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from tasks_app.models import AuditEvent, EventSource


@dataclass(frozen=True)
class Actor:
    source: str
    name: Callable[[], str]  # read when an event is written: DRF authenticates a token after the middleware ran


_SYSTEM = Actor(EventSource.SYSTEM, lambda: "system")
_current: ContextVar[Actor] = ContextVar("audit_actor", default=_SYSTEM)


@contextlib.contextmanager
def acting(source: str, name: str | Callable[[], str]) -> Iterator[None]:
    reset = _current.set(Actor(source, name if callable(name) else (lambda: name)))
    try:
        yield
    finally:
        _current.reset(reset)


def command_line_actor() -> str:
    """`schedulerctl` runs as whoever has a shell on the box: that login, on that host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def audit(action: str, object_type: str, object_id: object, changed: Iterable[str] = (), *,
          at: datetime | None = None) -> AuditEvent:
    """Record one configuration change (field names only, never values); call it inside the change's
    transaction, so the change and its record commit together. `at`: the moment it is about (default now)."""
    actor = _current.get()
    return AuditEvent.objects.create(actor=actor.name()[:150], source=actor.source, action=action,
                                     object_type=object_type, object_id=str(object_id)[:200],
                                     changed=sorted(set(changed)), created_at=at or timezone.now())


def credential_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Which credential keys were added, replaced or removed: `credentials.KEY` names, never values."""
    keys = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return [f"credentials.{key}" for key in keys]


class AuditMiddleware:
    """Every request to the API or the admin acts as its user, from `api` or `admin`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        source = EventSource.ADMIN if request.path.startswith("/admin/") else EventSource.API

        def name() -> str:
            user = getattr(request, "user", None)
            return user.get_username() if user is not None and user.is_authenticated else "anonymous"

        with acting(source, name):
            return self.get_response(request)
