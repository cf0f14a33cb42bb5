"""Workers register and heartbeat (SPEC §8 `Worker`); groups with no live consumer get no leases and say
`no_worker` in the API, schedulerctl, the admin, the dashboard and /healthz. (Real worker processes registering
themselves: tests/e2e/test_workers.py.)"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db.models.functions import Now
from rest_framework.test import APIClient

from tasks_app import stats
from tasks_app.cli import run
from tasks_app.models import Heartbeat, Worker, WorkerGroup
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.workers import tick_heartbeat, worker_heartbeat, worker_stopped, workers_prune
from tests.factories import TaskFactory, WorkerGroupFactory, live_worker
from tests.tasks_app.test_api import client_for

pytestmark = pytest.mark.django_db


def _silence(hostname: str, seconds: float) -> None:
    """As if the worker's last beat was `seconds` ago (by the database's clock)."""
    Worker.objects.filter(hostname=hostname).update(last_heartbeat=Now() - timedelta(seconds=seconds))


def _health(name: str) -> str:
    return WorkerGroup.objects.get(name=name).health


def test_only_groups_with_a_live_worker_take_leases() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    WorkerGroupFactory(account="spare", max_concurrent=5, live=False)  # added while the stack runs: no worker yet
    spare = WorkerGroup.objects.get(name="claude-spare")
    pinned = TaskFactory(worker_group=spare, worker_group_pinned=True)
    anywhere = [TaskFactory() for _ in range(3)]

    leases = dispatch_runnable()

    assert sorted(lease.queue for lease in leases) == ["claude-main"] * 3
    assert {lease.task_id for lease in leases} == {t.pk for t in anywhere}
    pinned.refresh_from_db()
    assert (pinned.status, pinned.lease_token) == ("queued", None)  # waits; never leased to nobody
    assert (_health("claude-main"), _health("claude-spare")) == ("ok", "no_worker")

    live_worker("claude-spare")  # its box starts
    (lease,) = dispatch_runnable()
    assert (lease.task_id, lease.queue) == (pinned.pk, "claude-spare")
    assert _health("claude-spare") == "ok"


def test_a_silent_worker_stops_counting_after_the_timeout(settings) -> None:
    settings.SCHEDULER_WORKER_TIMEOUT_SECONDS = 30
    WorkerGroupFactory(account="main", max_concurrent=5, live=False)
    box = live_worker("claude-main", hostname="claude-main@box1")
    TaskFactory()

    _silence(box, 25)  # late, within the timeout
    assert _health("claude-main") == "ok"
    _silence(box, 31)  # box stalled, died, or lost the broker
    assert _health("claude-main") == "no_worker"
    assert dispatch_runnable() == []

    worker_heartbeat(hostname=box, pid=Worker.objects.get(hostname=box).pid, queues=["claude-main"])
    assert len(dispatch_runnable()) == 1


def test_a_cleanly_stopped_worker_stops_counting_at_once() -> None:
    WorkerGroupFactory(account="main", live=False)
    box = live_worker("claude-main")
    pid = Worker.objects.get(hostname=box).pid
    TaskFactory()

    worker_stopped(hostname=box, pid=pid)

    assert _health("claude-main") == "no_worker" and dispatch_runnable() == []
    assert Worker.objects.get(hostname=box).stopped_at is not None


def test_heartbeat_says_when_a_worker_becomes_a_live_consumer() -> None:
    beat = {"hostname": "claude-main@box1", "pid": 41}
    assert worker_heartbeat(**beat, queues=["claude-main"]) is True  # registers
    assert worker_heartbeat(**beat, queues=["claude-main"]) is False  # renews
    assert worker_heartbeat(**beat, queues=["claude-main", "codex-main"]) is True  # consumes another queue
    _silence("claude-main@box1", 3600)
    assert worker_heartbeat(**beat, queues=["codex-main", "claude-main"]) is True  # back after silence
    worker_stopped(**beat)
    assert worker_heartbeat(**beat, queues=["claude-main", "codex-main"]) is True  # restarted consumer
    (worker,) = Worker.objects.all()
    assert (worker.queues, worker.stopped_at) == (["claude-main", "codex-main"], None)


def test_health_order_quarantined_paused_no_worker_rate_limited() -> None:
    from django.utils import timezone

    WorkerGroupFactory(account="a", live=False, enabled=False)
    WorkerGroupFactory(account="b", live=False, rate_limited_until=timezone.now() + timedelta(minutes=5))
    WorkerGroupFactory(account="c", rate_limited_until=timezone.now() + timedelta(minutes=5))
    WorkerGroupFactory(account="d", live=False, quarantined_at=timezone.now())

    assert [(g.name, g.health) for g in WorkerGroup.objects.order_by("name")] == [
        ("claude-a", "paused"), ("claude-b", "no_worker"), ("claude-c", "rate_limited"), ("claude-d", "quarantined")]


def test_long_gone_workers_are_pruned() -> None:
    old, recent = live_worker("claude-main", hostname="old@box"), live_worker("claude-main", hostname="new@box")
    _silence(old, 8 * 24 * 3600)
    _silence(recent, 3600)

    assert workers_prune() == 1
    assert list(Worker.objects.values_list("hostname", flat=True)) == [recent]


# --- API ------------------------------------------------------------------------------------------------------


def test_workers_api_is_staff_only_and_lists_liveness() -> None:
    live_worker("claude-main", "control", hostname="box1@h")
    gone = live_worker("codex-main", hostname="box2@h")
    _silence(gone, 3600)
    staff, alice = client_for("root", "ops", staff=True), client_for("alice", "acme")

    assert alice.get("/api/v1/workers/").status_code == 403
    assert APIClient().get("/api/v1/workers/").status_code in (401, 403)
    body = staff.get("/api/v1/workers/").json()
    assert [(w["hostname"], w["alive"], w["queues"]) for w in body] == [
        ("box1@h", True, ["claude-main", "control"]), ("box2@h", False, ["codex-main"])]
    assert set(body[0]) == {"hostname", "pid", "queues", "concurrency", "sandbox", "alive", "started_at",
                            "last_heartbeat", "stopped_at"}
    assert [w["hostname"] for w in staff.get("/api/v1/workers/?alive=true").json()] == ["box1@h"]
    assert [w["hostname"] for w in staff.get("/api/v1/workers/?alive=false").json()] == ["box2@h"]
    assert [w["hostname"] for w in staff.get("/api/v1/workers/?queue=codex-main").json()] == ["box2@h"]
    bad = staff.get("/api/v1/workers/?alive=maybe")
    assert bad.status_code == 400 and bad.json() == {"alive": ["must be true or false"]}


def test_group_api_shows_health_live_workers_and_the_command_to_start_one() -> None:
    staff = client_for("root", "ops", staff=True)
    created = staff.post("/api/v1/worker-groups/", {"tool": "codex", "account": "night", "max_concurrent": 3},
                         format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["health"], body["live_workers"]) == ("no_worker", 0)
    assert body["worker_command"] == "celery -A workers worker -Q codex-night -c 3 -n codex-night@%h"

    live_worker("codex-night")
    (listed,) = staff.get("/api/v1/worker-groups/").json()
    assert (listed["name"], listed["health"], listed["live_workers"]) == ("codex-night", "ok", 1)


def test_group_list_api_asks_for_live_workers_once(django_assert_max_num_queries) -> None:
    for n in range(6):
        WorkerGroupFactory(account=f"a{n}")
    staff = client_for("root", "ops", staff=True)
    staff.get("/api/v1/worker-groups/")  # authenticate once, outside the count

    with django_assert_max_num_queries(6):
        body = staff.get("/api/v1/worker-groups/").json()
    assert [g["health"] for g in body] == ["ok"] * 6


# --- schedulerctl ---------------------------------------------------------------------------------------------


def test_groups_add_prints_the_command_that_starts_a_worker_for_it(capsys) -> None:
    assert run(["groups", "add", "gemini", "team-b", "--max-concurrent", "2"]) == 0
    out = capsys.readouterr().out
    assert "health no_worker" in out
    assert "celery -A workers worker -Q gemini-team-b -c 2 -n gemini-team-b@%h" in out

    live_worker("gemini-team-b")
    assert run(["groups", "list", "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)
    assert (group["health"], group["live_workers"]) == ("ok", 1)
    assert run(["groups", "list"]) == 0
    assert "ok" in capsys.readouterr().out


def test_workers_list(capsys) -> None:
    live_worker("claude-main", hostname="box1@h")
    _silence(live_worker("codex-main", hostname="box2@h"), 3600)

    assert run(["workers", "list", "--json"]) == 0
    assert [w["hostname"] for w in json.loads(capsys.readouterr().out)] == ["box1@h"]
    assert run(["workers", "list", "--all", "--json"]) == 0
    assert [(w["hostname"], w["alive"]) for w in json.loads(capsys.readouterr().out)] == [
        ("box1@h", True), ("box2@h", False)]
    assert run(["workers", "list", "--all"]) == 0
    assert "box2@h" in capsys.readouterr().out


# --- admin and dashboard --------------------------------------------------------------------------------------


def test_admin_and_dashboard_show_no_worker(admin_client) -> None:
    WorkerGroupFactory(account="main")
    spare = WorkerGroupFactory(account="spare", live=False)

    listing = admin_client.get("/admin/tasks_app/workergroup/").content.decode()
    detail = admin_client.get(f"/admin/tasks_app/workergroup/{spare.pk}/change/").content.decode()
    workers = admin_client.get("/admin/tasks_app/worker/").content.decode()

    assert "no_worker" in listing
    assert "none: the group gets no work until one starts" in detail
    assert "celery -A workers worker -Q claude-spare -c 1 -n claude-spare@%h" in detail
    assert "test-claude-main@box" in workers
    loads = {g.name: (g.health, g.live_workers) for g in stats.group_loads(now=stats.timezone.now())}
    assert loads == {"claude-main": ("ok", 1), "claude-spare": ("no_worker", 0)}
    assert "no_worker" in admin_client.get("/admin/dashboard/").content.decode()


def test_admin_add_says_how_to_start_a_worker(admin_client) -> None:
    response = admin_client.post("/admin/tasks_app/workergroup/add/", {
        "tool": "claude", "account": "fresh", "max_concurrent": "2", "enabled": "on", "env": "{}",
        "extra_args": "[]", "credentials_set": "",
    }, follow=True)

    assert WorkerGroup.objects.filter(name="claude-fresh").exists(), response.content.decode()[:2000]
    assert "celery -A workers worker -Q claude-fresh -c 2 -n claude-fresh@%h" in response.content.decode()


# --- /healthz -------------------------------------------------------------------------------------------------


def test_healthz_reports_components_and_degrades_without_failing_the_probe(settings) -> None:
    settings.SCHEDULER_TICK_SECONDS = 5
    client = APIClient()

    WorkerGroupFactory(account="secret-team", live=False)
    body = client.get("/healthz").json()
    assert body["status"] == "degraded" and body["database"] == body["broker"] == "ok"
    assert body["components"]["beat"] == {"status": "stale", "last_tick": None}
    assert body["components"]["workers"] == {"status": "degraded", "live": 0, "control": 0,
                                             "groups_without_worker": 1}
    assert "secret-team" not in json.dumps(body)  # counts, never names

    tick_heartbeat()
    live_worker("control")
    live_worker("claude-secret-team")
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["components"]["workers"] == {"status": "ok", "live": 2, "control": 1, "groups_without_worker": 0}
    assert body["components"]["beat"]["status"] == "ok"

    Heartbeat.objects.update(at=Now() - timedelta(seconds=31))  # beat (or every control worker) stopped
    body = client.get("/healthz").json()
    assert (body["status"], body["components"]["beat"]["status"]) == ("degraded", "stale")


def test_healthz_is_503_when_the_broker_is_unreachable() -> None:
    from celery import current_app

    before = current_app.conf.broker_write_url
    current_app.conf.broker_write_url = "redis://127.0.0.1:1/0"  # a real address where nothing listens
    try:
        response = APIClient().get("/healthz")
    finally:
        current_app.conf.broker_write_url = before
    body = response.json()
    assert response.status_code == 503 and body["status"] == "error"
    assert body["components"]["broker"]["status"] == "error" and body["broker"].startswith("error: ")
    assert body["components"]["database"] == {"status": "ok"}
