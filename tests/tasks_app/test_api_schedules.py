from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks_app.models import Schedule, ScheduleFiring, Task
from tests.tasks_app.test_api import client_for

pytestmark = pytest.mark.django_db

BODY = {"name": "standup", "tool": "codex", "prompt": "summarise new issues", "cron": "0 17 * * 1-5",
        "timezone": "Asia/Shanghai", "output_files": ["summary.md"]}


def test_create_list_detail_patch_and_delete_a_schedule() -> None:
    client = client_for("sam", "acme")

    created = client.post("/api/v1/schedules/", BODY, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["next_run_at_local"].endswith("T17:00:00+08:00") and body["next_run_at"].endswith("T09:00:00Z")
    assert (body["tenant"], body["overlap_policy"], body["enabled"]) == ("acme", "skip", True)
    assert [s["name"] for s in client.get("/api/v1/schedules/").json()] == ["standup"]

    patched = client.patch(f"/api/v1/schedules/{body['id']}/", {"interval_seconds": 600}, format="json")
    assert patched.status_code == 200, patched.json()
    assert (patched.json()["cron"], patched.json()["interval_seconds"]) == ("", 600)
    assert PeriodicTask.objects.get(name=f"schedule:{body['id']}").interval.every == 600

    assert client.delete(f"/api/v1/schedules/{body['id']}/").status_code == 204
    assert Schedule.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "every day"}, "cron"),
        ({"timezone": "Atlantis/Capital"}, "timezone"),
        ({"cron": "", "interval_seconds": 0}, "interval_seconds"),
        ({"cron": "", "run_at": "2001-01-01T00:00:00Z"}, "run_at"),
        ({"interval_seconds": 60}, "timing"),
        ({"prompt": ""}, "prompt"),
        ({"overlap_policy": "maybe"}, "overlap_policy"),
        ({"output_files": ["/abs"]}, "output_files[0]"),
        ({"worker_group": "codex-nope"}, "worker_group"),
        ({"name": 7}, "name"),
    ],
)
def test_bad_schedules_are_400_naming_the_field_and_write_nothing(change: dict, field: str) -> None:
    client = client_for("sam", "acme")

    response = client.post("/api/v1/schedules/", {**BODY, **change}, format="json")

    assert response.status_code == 400 and field in response.json(), response.json()
    assert Schedule.objects.count() == 0 and not PeriodicTask.objects.filter(task="workers.fire_schedule").exists()


def test_pause_resume_trigger_and_spawned_tasks() -> None:
    client = client_for("sam", "acme")
    schedule_id = client.post("/api/v1/schedules/", BODY, format="json").json()["id"]

    assert client.post(f"/api/v1/schedules/{schedule_id}/pause/").json()["enabled"] is False
    fired = client.post(f"/api/v1/schedules/{schedule_id}/trigger/")  # works while paused
    assert fired.status_code == 201 and fired.json()["status"] == "queued"
    assert client.post(f"/api/v1/schedules/{schedule_id}/resume/").json()["enabled"] is True
    spawned = client.get(f"/api/v1/schedules/{schedule_id}/tasks/").json()["results"]
    assert [t["id"] for t in spawned] == [fired.json()["id"]]
    assert client.get(f"/api/v1/tasks/?schedule={schedule_id}").json()["results"][0]["id"] == fired.json()["id"]
    assert ScheduleFiring.objects.get().source == "trigger"


def test_other_tenants_schedules_are_404() -> None:
    owner = client_for("sam", "acme")
    other = client_for("olga", "globex")
    schedule_id = owner.post("/api/v1/schedules/", BODY, format="json").json()["id"]

    assert other.get("/api/v1/schedules/").json() == []
    for method, path in (("get", ""), ("patch", ""), ("delete", ""), ("post", "pause/"), ("post", "trigger/"),
                         ("get", "tasks/")):
        assert getattr(other, method)(f"/api/v1/schedules/{schedule_id}/{path}", {}, format="json").status_code == 404
    assert Task.objects.count() == 0 and Schedule.objects.get().enabled is True


def test_one_off_schedule_in_the_future() -> None:
    client = client_for("sam", "acme")
    at = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)

    body = client.post("/api/v1/schedules/", {**BODY, "cron": "", "run_at": at.isoformat()}, format="json").json()

    assert body["next_run_at"].replace("Z", "+00:00") == at.isoformat()
    assert PeriodicTask.objects.get(name=f"schedule:{body['id']}").one_off is True
