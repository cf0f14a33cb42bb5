"""`GET /healthz`: no auth, no secrets (counts, never names).

`status` is `error` (HTTP 503) when the database or the broker cannot be reached: this process cannot take work.
It is `degraded` (HTTP 200: the web tier itself is fine, keep it in rotation) when beat's tick has stopped or an
enabled group has no live worker. `components` says which.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from tasks_app import selectors
from tasks_app.models import WorkerGroup
from tasks_app.services.enqueue import broker_check


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure is the answer, not a 500
        return {"status": "error", "error": type(exc).__name__}
    return {"status": "ok"}


def _broker() -> dict[str, Any]:
    try:
        broker_check(timeout=2)
    except Exception as exc:  # any failure is the answer, not a 500
        return {"status": "error", "error": type(exc).__name__}
    return {"status": "ok"}


def beat_stale_after() -> timedelta:
    return timedelta(seconds=max(3 * settings.SCHEDULER_TICK_SECONDS, 30.0))


def _beat() -> dict[str, Any]:
    last = selectors.tick_last()
    if last is None:
        return {"status": "stale", "last_tick": None}
    stale = timezone.now() - last > beat_stale_after()
    return {"status": "stale" if stale else "ok", "last_tick": last.isoformat()}


def _workers() -> dict[str, Any]:
    consumed = selectors.live_queue_counts()
    live = selectors.worker_list(alive=True).count()
    groups = list(WorkerGroup.objects.filter(enabled=True, quarantined_at__isnull=True).values_list("name", flat=True))
    without = sum(1 for name in groups if not consumed[name])
    control = consumed[settings.CELERY_TASK_DEFAULT_QUEUE]
    ok = without == 0 and control > 0
    return {"status": "ok" if ok else "degraded", "live": live, "control": control,
            "groups_without_worker": without}


def healthz(request: HttpRequest) -> JsonResponse:
    components = {"database": _database(), "broker": _broker()}
    if components["database"]["status"] == "ok":
        components["beat"] = _beat()
        components["workers"] = _workers()
    else:
        components["beat"] = components["workers"] = {"status": "unknown"}
    if any(components[name]["status"] != "ok" for name in ("database", "broker")):
        status = "error"
    elif any(c["status"] != "ok" for c in components.values()):
        status = "degraded"
    else:
        status = "ok"
    body = {"status": status,
            # The flat form of the first version, for existing probes.
            "database": _flat(components["database"]), "broker": _flat(components["broker"]),
            "components": components}
    return JsonResponse(body, status=503 if status == "error" else 200)


def _flat(component: dict[str, Any]) -> str:
    return "ok" if component["status"] == "ok" else f"error: {component.get('error', '')}"
