"""Account budgets (issue 16, SPEC §8): the dispatcher leases nothing to a group whose spend in the UTC day or month
reached its budget, warns once per window, and the budgets are set, shown and audited everywhere."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from tasks_app import svg
from tasks_app.cli import run
from tasks_app.models import AuditEvent, Task, TaskRun, TaskStatus, WorkerGroup
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.groups import group_update
from tests.factories import TaskFactory, WorkerGroupFactory, live_worker

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def _spent(group: WorkerGroup, cost: str | None, *, started_at: datetime, running: bool = False,
           tenant: str = "default", tokens: tuple[int, int] = (0, 0)) -> TaskRun:
    """A run of `group` started at `started_at` that cost `cost` (so far, when `running`)."""
    task = TaskFactory(tool=group.tool, tenant=tenant, worker_group=group,
                       status=TaskStatus.RUNNING if running else TaskStatus.SUCCEEDED)
    return TaskRun.objects.create(
        task=task, attempt=1, worker_group=group, lease_token=uuid.uuid4(),
        status=TaskRun.Status.RUNNING if running else TaskRun.Status.SUCCEEDED, started_at=started_at,
        finished_at=None if running else started_at + timedelta(minutes=1),
        cost_usd=Decimal(cost) if cost is not None else None, input_tokens=tokens[0], output_tokens=tokens[1])


def _leased_to(group: WorkerGroup) -> int:
    return Task.objects.filter(status=TaskStatus.LEASED, worker_group=group).count()


def _budget_events() -> list[tuple[str, str, list[str], str, str, datetime]]:
    return list(AuditEvent.objects.filter(action__startswith="budget_").order_by("created_at", "id")
                .values_list("action", "object_id", "changed", "source", "actor", "created_at"))


# --- the dispatcher -------------------------------------------------------------------------------


def test_a_group_at_its_daily_budget_gets_no_lease_its_sibling_takes_the_work_and_a_pinned_task_waits() -> None:
    main = WorkerGroupFactory(account="main", max_concurrent=5, daily_budget_usd=Decimal("5.00"))
    team = WorkerGroupFactory(account="team", max_concurrent=5)
    _spent(main, "3.00", started_at=NOW - timedelta(hours=3))
    _spent(main, "2.00", started_at=NOW - timedelta(hours=1))  # 5.00: the budget is reached
    unpinned = [TaskFactory() for _ in range(2)]
    pinned = TaskFactory(worker_group=main, worker_group_pinned=True)

    leases = dispatch_runnable(now=NOW)

    assert sorted(lease.queue for lease in leases) == ["claude-team", "claude-team"]
    assert {lease.task_id for lease in leases} == {task.pk for task in unpinned}
    pinned.refresh_from_db()
    assert pinned.status == TaskStatus.QUEUED and _leased_to(main) == 0 and _leased_to(team) == 2

    # The next UTC day is a new window: the pinned task goes to its account.
    (lease,) = dispatch_runnable(now=datetime(2025, 3, 11, 0, 0, tzinfo=UTC))

    assert (lease.task_id, lease.queue) == (pinned.pk, "claude-main")


def test_just_under_the_budget_the_group_still_takes_work() -> None:
    main = WorkerGroupFactory(account="main", daily_budget_usd=Decimal("5.00"))
    _spent(main, "4.99", started_at=NOW - timedelta(hours=1))
    TaskFactory()

    (lease,) = dispatch_runnable(now=NOW)

    assert lease.queue == "claude-main"


def test_the_running_cost_of_runs_in_flight_counts() -> None:
    main = WorkerGroupFactory(account="main", max_concurrent=5, daily_budget_usd=Decimal("1.00"))
    team = WorkerGroupFactory(account="team", max_concurrent=1)  # the most free slots go to main while it may
    _spent(main, "0.40", started_at=NOW - timedelta(hours=2))
    in_flight = _spent(main, "0.55", started_at=NOW - timedelta(minutes=5), running=True)
    TaskFactory()

    (lease,) = dispatch_runnable(now=NOW)
    assert lease.queue == "claude-main"  # 0.95 of 1.00

    in_flight.cost_usd = Decimal("0.60")  # as the worker records the cost so far from the CLI's stream
    in_flight.save(update_fields=["cost_usd"])
    TaskFactory()

    (lease,) = dispatch_runnable(now=NOW)
    assert lease.queue == "claude-team"  # 1.00 of 1.00
    assert _leased_to(team) == 1


def test_runs_started_yesterday_do_not_count_today_but_count_this_month() -> None:
    main = WorkerGroupFactory(account="main", max_concurrent=5, daily_budget_usd=Decimal("5"),
                              monthly_budget_usd=Decimal("20"))
    _spent(main, "9.00", started_at=datetime(2025, 3, 9, 23, 59, 59, tzinfo=UTC))
    _spent(main, "9.00", started_at=datetime(2025, 3, 1, 0, 0, tzinfo=UTC))
    _spent(main, "50.00", started_at=datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC))  # last month
    _spent(main, "1.00", started_at=datetime(2025, 3, 10, 0, 0, tzinfo=UTC))
    TaskFactory()

    assert len(dispatch_runnable(now=NOW)) == 1  # today 1.00 of 5, this month 19.00 of 20

    _spent(main, "1.00", started_at=datetime(2025, 3, 10, 1, 0, tzinfo=UTC))  # this month: 20.00 of 20
    TaskFactory()
    assert dispatch_runnable(now=NOW) == []
    assert dispatch_runnable(now=datetime(2025, 3, 31, 23, 59, tzinfo=UTC)) == []
    assert len(dispatch_runnable(now=datetime(2025, 4, 1, 0, 0, tzinfo=UTC))) == 1  # a new month


def test_a_budget_of_zero_takes_no_work_and_other_tools_are_not_affected() -> None:
    WorkerGroupFactory(account="main", daily_budget_usd=Decimal("0"))
    codex = WorkerGroupFactory(tool="codex", account="main")
    TaskFactory()
    codex_task = TaskFactory(tool="codex")

    (lease,) = dispatch_runnable(now=NOW)

    assert (lease.task_id, lease.queue) == (codex_task.pk, codex.name)


def test_the_spend_is_one_grouped_query_per_pass_and_none_without_budgets() -> None:
    groups = [WorkerGroupFactory(account=f"a{index}", max_concurrent=1) for index in range(3)]
    for group in groups:
        _spent(group, "1.00", started_at=NOW - timedelta(hours=1))

    def pass_queries() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            dispatch_runnable(now=NOW)
        return [query["sql"] for query in queries.captured_queries]

    without = pass_queries()
    for group in groups:
        group_update(name=group.name, changes={"daily_budget_usd": "10", "monthly_budget_usd": "100"})
    with_budgets = pass_queries()

    spend = [sql for sql in with_budgets if "cost_usd" in sql]
    assert len(with_budgets) == len(without) + 1 and len(spend) == 1
    assert not [sql for sql in without if "cost_usd" in sql]


# --- the warning ----------------------------------------------------------------------------------


def test_the_warning_at_80_percent_is_recorded_once_per_window_then_the_budget_reached(caplog) -> None:
    main = WorkerGroupFactory(account="main", daily_budget_usd=Decimal("10"))
    _spent(main, "7.99", started_at=NOW - timedelta(hours=2))
    dispatch_runnable(now=NOW)
    assert _budget_events() == []

    _spent(main, "0.01", started_at=NOW - timedelta(hours=1))  # 8.00: 80 %
    dispatch_runnable(now=NOW)
    dispatch_runnable(now=NOW + timedelta(minutes=5))

    assert _budget_events() == [("budget_warning", "claude-main", ["daily_budget_usd"], "system", "dispatcher", NOW)]
    assert "group claude-main has spent $8.00 of its daily budget of $10.00 (80%; warning at 80%)" in caplog.text

    _spent(main, "2.00", started_at=NOW)  # 10.00
    dispatch_runnable(now=NOW + timedelta(minutes=10))
    dispatch_runnable(now=NOW + timedelta(minutes=15))
    assert [event[0] for event in _budget_events()] == ["budget_warning", "budget_reached"]
    assert "group claude-main reached its daily budget ($10.00 spent of $10.00): it takes no new work until " \
           "2025-03-11 00:00 UTC" in caplog.text

    # The next day is a new window: a new warning when its spend crosses 80 % again.
    tomorrow = datetime(2025, 3, 11, 9, 0, tzinfo=UTC)
    _spent(main, "8.50", started_at=tomorrow - timedelta(hours=1))
    dispatch_runnable(now=tomorrow)
    dispatch_runnable(now=tomorrow + timedelta(hours=1))

    assert [(event[0], event[5]) for event in _budget_events()] == [
        ("budget_warning", NOW), ("budget_reached", NOW + timedelta(minutes=10)), ("budget_warning", tomorrow)]


def test_daily_and_monthly_warnings_are_separate_and_follow_the_warn_fraction_setting(settings) -> None:
    settings.SCHEDULER_BUDGET_WARN_FRACTION = 0.5
    main = WorkerGroupFactory(account="main", daily_budget_usd=Decimal("4"), monthly_budget_usd=Decimal("10"))
    _spent(main, "3.00", started_at=datetime(2025, 3, 2, tzinfo=UTC))
    _spent(main, "2.00", started_at=NOW - timedelta(hours=1))

    dispatch_runnable(now=NOW)
    dispatch_runnable(now=NOW + timedelta(hours=1))

    # Today 2.00 of 4 (50 %), this month 5.00 of 10 (50 %): one warning each.
    assert sorted((event[0], event[2][0]) for event in _budget_events()) == [
        ("budget_warning", "daily_budget_usd"), ("budget_warning", "monthly_budget_usd")]
    # The next day starts a new daily window, not a new monthly one.
    tomorrow = datetime(2025, 3, 11, 12, 0, tzinfo=UTC)
    _spent(main, "2.50", started_at=tomorrow - timedelta(hours=1))
    dispatch_runnable(now=tomorrow)
    assert sorted((event[2][0], event[5].date().day) for event in _budget_events()) == [
        ("daily_budget_usd", 10), ("daily_budget_usd", 11), ("monthly_budget_usd", 10)]


# --- health ---------------------------------------------------------------------------------------


def test_health_says_over_budget_after_no_worker_and_before_rate_limited() -> None:
    now = timezone.now()
    group = WorkerGroupFactory(account="main", daily_budget_usd=Decimal("1"),
                               rate_limited_until=now + timedelta(minutes=5))
    assert WorkerGroup.objects.get(pk=group.pk).health == "rate_limited"

    _spent(group, "1.00", started_at=now)
    assert WorkerGroup.objects.get(pk=group.pk).health == "over_budget"

    idle = WorkerGroupFactory(account="idle", live=False, daily_budget_usd=Decimal("0"))
    assert WorkerGroup.objects.get(pk=idle.pk).health == "no_worker"
    paused = WorkerGroupFactory(account="paused", enabled=False, daily_budget_usd=Decimal("0"))
    assert WorkerGroup.objects.get(pk=paused.pk).health == "paused"


# --- the API, schedulerctl and the admin ----------------------------------------------------------


def _client(username: str, tenant: str, *, staff: bool = False) -> APIClient:
    user_create(username=username, tenant=tenant, staff=staff)
    _, key = token_create(username=username)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_budgets_are_set_shown_cleared_and_audited_through_the_api_without_the_credentials_permission() -> None:
    staff = _client("root", "ops", staff=True)  # no tasks_app.manage_credentials: budgets do not need it

    created = staff.post("/api/v1/worker-groups/", {"tool": "claude", "account": "main", "daily_budget_usd": 5,
                                                    "monthly_budget_usd": 100.5}, format="json")

    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["daily_budget_usd"], body["monthly_budget_usd"], body["spend_today_usd"], body["spend_month_usd"]) \
        == (5.0, 100.5, 0.0, 0.0)
    group = WorkerGroup.objects.get(name="claude-main")
    live_worker(group.name)
    assert (group.daily_budget_usd, group.monthly_budget_usd) == (Decimal("5.00"), Decimal("100.50"))

    _spent(group, "5.25", started_at=timezone.now())
    patched = staff.patch("/api/v1/worker-groups/claude-main/", {"monthly_budget_usd": None}, format="json")

    assert patched.status_code == 200
    body = patched.json()
    assert (body["daily_budget_usd"], body["monthly_budget_usd"], body["spend_today_usd"]) == (5.0, None, 5.25)
    assert body["health"] == "over_budget"
    listed = {g["name"]: g for g in staff.get("/api/v1/worker-groups/").json()}
    assert listed["claude-main"]["health"] == "over_budget"
    assert list(AuditEvent.objects.filter(object_id="claude-main").order_by("id").values_list("action", "changed")) \
        == [("create", ["account", "daily_budget_usd", "enabled", "max_concurrent", "monthly_budget_usd", "tool"]),
            ("update", ["monthly_budget_usd"])]


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"daily_budget_usd": -1}, "daily_budget_usd", "must be an amount in USD from 0"),
    ({"monthly_budget_usd": -0.01}, "monthly_budget_usd", "must be an amount in USD from 0"),
    ({"daily_budget_usd": "ten"}, "daily_budget_usd", "must be a number, not str"),
    ({"daily_budget_usd": "5"}, "daily_budget_usd", "must be a number, not str"),
    ({"daily_budget_usd": 1.005}, "daily_budget_usd", "no more than 2 decimal places"),
    ({"daily_budget_usd": True}, "daily_budget_usd", "must be a number, not bool"),
])
def test_a_bad_budget_is_a_400_naming_the_field_and_changes_nothing(body: dict[str, Any], field: str,
                                                                     message: str) -> None:
    staff = _client("root", "ops", staff=True)
    WorkerGroupFactory(account="main", daily_budget_usd=Decimal("3"))
    audit_before = AuditEvent.objects.count()

    created = staff.post("/api/v1/worker-groups/", {"tool": "claude", "account": "other", **body}, format="json")
    patched = staff.patch("/api/v1/worker-groups/claude-main/", body, format="json")

    for response in (created, patched):
        assert response.status_code == 400
        assert message in response.json()[field][0]
    assert list(WorkerGroup.objects.values_list("name", "daily_budget_usd", "monthly_budget_usd")) == [
        ("claude-main", Decimal("3.00"), None)]
    assert AuditEvent.objects.count() == audit_before


def test_schedulerctl_groups_add_set_clear_and_list_budgets(capsys) -> None:
    assert run(["groups", "add", "claude", "main", "--daily-budget", "5", "--monthly-budget", "100"]) == 0
    assert "budgets: daily $0.00 of $5.00, monthly $0.00 of $100.00" in capsys.readouterr().out
    group = WorkerGroup.objects.get()
    _spent(group, "1.25", started_at=timezone.now())

    assert run(["groups", "set", "claude-main", "--daily-budget", "7.50"]) == 0
    assert run(["groups", "set", "claude-main", "--monthly-budget", "none"]) == 0
    capsys.readouterr()
    group.refresh_from_db()
    assert (group.daily_budget_usd, group.monthly_budget_usd) == (Decimal("7.50"), None)

    assert run(["groups", "list"]) == 0
    table = capsys.readouterr().out
    assert "1.25 / 7.50" in table and "today $ / budget" in table
    assert run(["--json", "groups", "list"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["daily_budget_usd"], row["monthly_budget_usd"], row["spend_today_usd"], row["spend_month_usd"]) == (
        7.5, None, 1.25, 1.25)
    assert [changed for changed, in AuditEvent.objects.filter(action="update").order_by("id")
            .values_list("changed")] == [["daily_budget_usd"], ["monthly_budget_usd"]]

    assert run(["groups", "set", "claude-main", "--daily-budget", "-2"]) == 2
    assert "daily_budget_usd: must be an amount in USD from 0" in capsys.readouterr().err
    assert run(["groups", "add", "claude", "other", "--monthly-budget", "lots"]) == 2
    assert "monthly_budget_usd: must be an amount in USD from 0" in capsys.readouterr().err
    assert WorkerGroup.objects.count() == 1
    assert WorkerGroup.objects.get().daily_budget_usd == Decimal("7.50")


def test_the_admin_form_sets_and_clears_budgets_through_the_service(admin_client) -> None:
    add = admin_client.post(reverse("admin:tasks_app_workergroup_add"), {
        "tool": "claude", "account": "main", "max_concurrent": "1", "enabled": "on", "env": "{}", "extra_args": "[]",
        "credentials_set": "", "daily_budget_usd": "2.50", "monthly_budget_usd": ""})
    assert add.status_code == 302
    group = WorkerGroup.objects.get()
    assert (group.daily_budget_usd, group.monthly_budget_usd) == (Decimal("2.50"), None)

    url = reverse("admin:tasks_app_workergroup_change", args=[group.pk])
    form = {"max_concurrent": "1", "enabled": "on", "env": "{}", "extra_args": "[]"}
    refused = admin_client.post(url, {**form, "daily_budget_usd": "-1", "monthly_budget_usd": "40"})
    assert refused.status_code == 200
    assert list(refused.context["adminform"].form.errors) == ["daily_budget_usd"]

    changed = admin_client.post(url, {**form, "daily_budget_usd": "", "monthly_budget_usd": "40"})
    assert changed.status_code == 302
    group.refresh_from_db()
    assert (group.daily_budget_usd, group.monthly_budget_usd) == (None, Decimal("40.00"))
    assert AuditEvent.objects.filter(action="update").get().changed == ["daily_budget_usd", "monthly_budget_usd"]
    _spent(group, "40", started_at=timezone.now())
    live_worker(group.name)
    changelist = admin_client.get(reverse("admin:tasks_app_workergroup_changelist")).content.decode()
    assert "over_budget" in changelist and "$40.00 of $40.00" in changelist


# --- usage ----------------------------------------------------------------------------------------


@pytest.fixture
def usage_history() -> dict[str, WorkerGroup]:
    """Two accounts, two tenants, three UTC days: today is the UTC day of timezone.now()."""
    today = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    main = WorkerGroupFactory(account="main")
    team = WorkerGroupFactory(tool="codex", account="team")
    _spent(main, "0.010", started_at=today - timedelta(days=2, seconds=1), tenant="acme", tokens=(1, 1))  # outside
    _spent(main, "0.25", started_at=today - timedelta(days=2), tenant="acme", tokens=(100, 10))
    _spent(main, "0.50", started_at=today - timedelta(days=1), tenant="acme", tokens=(200, 20))
    _spent(main, "0.125", started_at=today - timedelta(days=1), tenant="globex", tokens=(300, 30))
    _spent(team, "1.00", started_at=today - timedelta(days=1), tenant="globex", tokens=(400, 40))
    _spent(main, "0.03", started_at=today, tenant="acme", running=True, tokens=(50, 5))  # in flight
    return {"main": main, "team": team}


def _day(offset: int) -> str:
    return (timezone.now().astimezone(UTC).date() - timedelta(days=offset)).isoformat()


def test_usage_api_per_day_and_group_for_staff(usage_history: dict[str, WorkerGroup]) -> None:
    staff = _client("root", "ops", staff=True)

    response = staff.get("/api/v1/usage/", {"since": _day(2)})

    assert response.status_code == 200
    body = response.json()
    assert (body["since"], body["until"], body["by"]) == (_day(2), _day(0), "group")
    assert [(r["day"], r["worker_group"], r["tenant"], r["runs"], r["input_tokens"], r["output_tokens"],
             r["cost_usd"]) for r in body["rows"]] == [
        (_day(2), "claude-main", None, 1, 100, 10, 0.25),
        (_day(1), "claude-main", None, 2, 500, 50, 0.625),
        (_day(1), "codex-team", None, 1, 400, 40, 1.0),
        (_day(0), "claude-main", None, 1, 50, 5, 0.03),
    ]
    assert body["totals"] == {"runs": 5, "input_tokens": 1050, "output_tokens": 105, "cost_usd": 1.905}

    by_tenant = staff.get("/api/v1/usage/", {"since": _day(1), "by": "tenant"}).json()["rows"]
    assert [(r["day"], r["tenant"], r["worker_group"], r["runs"], r["cost_usd"]) for r in by_tenant] == [
        (_day(1), "acme", None, 1, 0.5), (_day(1), "globex", None, 2, 1.125), (_day(0), "acme", None, 1, 0.03)]
    one = staff.get("/api/v1/usage/", {"since": _day(1), "group": "codex-team", "tenant": "globex"}).json()
    assert [(r["day"], r["worker_group"], r["cost_usd"]) for r in one["rows"]] == [(_day(1), "codex-team", 1.0)]


def test_usage_api_shows_a_tenant_user_only_its_tenant(usage_history: dict[str, WorkerGroup]) -> None:
    alice = _client("alice", "acme")

    mine = alice.get("/api/v1/usage/", {"since": _day(2)}).json()
    other = alice.get("/api/v1/usage/", {"since": _day(2), "tenant": "globex"}).json()
    by_tenant = alice.get("/api/v1/usage/", {"since": _day(2), "by": "tenant"}).json()

    assert [(r["day"], r["worker_group"], r["runs"], r["cost_usd"]) for r in mine["rows"]] == [
        (_day(2), "claude-main", 1, 0.25), (_day(1), "claude-main", 1, 0.5), (_day(0), "claude-main", 1, 0.03)]
    assert other["rows"] == [] and other["totals"]["runs"] == 0
    assert {r["tenant"] for r in by_tenant["rows"]} == {"acme"}
    assert APIClient().get("/api/v1/usage/").status_code == 401


@pytest.mark.parametrize(("params", "field", "message"), [
    ({"since": "yesterday"}, "since", "Date has wrong format"),
    ({"since": "2025-03-10", "until": "2025-03-09"}, "since", "must be on or before until"),
    ({"since": "2024-01-01", "until": "2025-03-10"}, "since", "at most 366 days before until"),
    ({"by": "model"}, "by", "is not a valid choice"),
    ({"day": "2025-03-10"}, "day", "unknown query parameter"),
])
def test_usage_api_rejects_bad_parameters_naming_them(params: dict[str, str], field: str, message: str) -> None:
    response = _client("root", "ops", staff=True).get("/api/v1/usage/", params)

    assert response.status_code == 400
    assert message in response.json()[field][0]


def test_schedulerctl_usage_table_and_json(usage_history: dict[str, WorkerGroup], capsys) -> None:
    assert run(["usage", "--days", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "│" in line and (_day(1) in line or _day(0) in line
                                                                 or "total" in line)]
    assert len(lines) == 4
    assert all(cell in lines[0] for cell in (_day(1), "claude-main", "2", "500", "50", "0.6250"))
    assert all(cell in lines[1] for cell in (_day(1), "codex-team", "1", "400", "40", "1.0000"))
    assert all(cell in lines[2] for cell in (_day(0), "claude-main", "1", "50", "5", "0.0300"))
    assert all(cell in lines[3] for cell in ("total", "4", "950", "95", "1.6550"))
    assert _day(2) not in out

    assert run(["usage", "--days", "3", "--by", "tenant", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["since"], data["until"], data["by"]) == (_day(2), _day(0), "tenant")
    assert [(r["day"], r["tenant"], r["runs"], r["cost_usd"]) for r in data["rows"]] == [
        (_day(2), "acme", 1, 0.25), (_day(1), "acme", 1, 0.5), (_day(1), "globex", 2, 1.125),
        (_day(0), "acme", 1, 0.03)]

    assert run(["usage", "--days", "0"]) == 2
    assert "--days must be from 1 to 366" in capsys.readouterr().err


# --- the dashboard and the metrics ----------------------------------------------------------------


def _texts(markup: str) -> list[str]:
    return [element.text or "" for element in ET.fromstring(markup).iter(f"{SVG}text")]


def test_nice_axis_and_money_labels() -> None:
    assert svg.nice_axis(0.03) == pytest.approx((0.03, 0.01))
    assert svg.nice_axis(0.034) == pytest.approx((0.04, 0.01))
    assert svg.nice_axis(7) == pytest.approx((8, 2))
    assert svg.nice_axis(1234) == pytest.approx((1500, 500))
    assert svg.nice_axis(0.0009) == pytest.approx((0.001, 0.00025))
    assert [svg.usd_axis_label(v, 0.01) for v in (0, 0.01, 0.02)] == ["$0.00", "$0.01", "$0.02"]
    assert [svg.usd_axis_label(v, 0.00025) for v in (0, 0.00025)] == ["$0.00000", "$0.00025"]
    assert [svg.usd_axis_label(v, 2.5) for v in (0, 2.5, 5)] == ["$0.00", "$2.50", "$5.00"]
    assert [svg.usd_axis_label(v, 500) for v in (0, 1500)] == ["$0", "$1,500"]


def test_the_cost_chart_scales_to_cents_and_draws_each_accounts_budget_line() -> None:
    markup = svg.budget_column_chart(
        ["Mon", "Tue"], [("claude-main", [0.012, 0.03]), ("codex-team", [0.004, 0.0]), ("gemini-x", [0, 0])],
        budgets={"claude-main": 0.05, "gemini-x": 40.0}, title="cost")

    root = ET.fromstring(markup)
    texts = _texts(markup)
    ticks = [text for text in texts if text.startswith("$")]
    assert ticks == ["$0.00", "$0.02", "$0.04", "$0.06"]  # 0.05 budget in view: the axis goes to 0.06
    budget_lines = [line for line in root.iter(f"{SVG}line") if line.get("class") == "budget"]
    assert len(budget_lines) == 1  # gemini-x's $40 would flatten the cents: left off the scale, said in the legend
    assert budget_lines[0].find(f"{SVG}title").text == "claude-main budget: $0.05"
    assert float(budget_lines[0].get("y1")) == pytest.approx(172 - 160 * 0.05 / 0.06, abs=0.1)
    assert {"claude-main (budget $0.05)", "codex-team", "gemini-x (budget $40.00, off scale)"} <= set(texts)

    only_budgets = svg.budget_column_chart(["Mon"], [("claude-main", [0])], budgets={"claude-main": 5}, title="t")
    assert [text for text in _texts(only_budgets) if text.startswith("$")] == ["$0", "$2", "$4", "$6"]
    assert _texts(svg.budget_column_chart(["Mon"], [("a", [0])], title="idle")) == ["no data"]


def test_the_dashboard_cost_chart_has_cent_ticks_and_the_budget_line(admin_client) -> None:
    main = WorkerGroupFactory(account="main", daily_budget_usd=Decimal("0.05"))
    _spent(main, "0.03", started_at=timezone.now() - timedelta(seconds=5))

    html = admin_client.get("/admin/dashboard/").content.decode()

    start = html.index('aria-label="Cost (USD) per UTC day per account, daily budgets"')
    chart = html[html.rindex("<svg", 0, start):html.index("</svg>", start) + len("</svg>")]
    assert [text for text in _texts(chart) if text.startswith("$")] == ["$0.00", "$0.02", "$0.04", "$0.06"]
    assert 'class="budget"' in chart and "claude-main (budget $0.05)" in chart
    assert "$0.03 / $0.05" in html  # the groups table: spent today / budget


def test_metrics_expose_spend_and_budget_per_account(client, settings) -> None:
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0
    main = WorkerGroupFactory(account="main", daily_budget_usd=Decimal("5"), monthly_budget_usd=Decimal("50"))
    WorkerGroupFactory(tool="codex", account="team")
    now = timezone.now()
    _spent(main, "1.25", started_at=now)
    _spent(main, "0.50", started_at=now, running=True)

    response = client.get("/metrics")

    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(response.content.decode()) for sample in family.samples}

    def labels(group: str, tool: str, window: str) -> tuple:
        return (("tool", tool), ("window", window), ("worker_group", group))

    assert samples[("cli_scheduler_group_spend_usd", labels("claude-main", "claude", "daily"))] == 1.75
    assert samples[("cli_scheduler_group_spend_usd", labels("claude-main", "claude", "monthly"))] == 1.75
    assert samples[("cli_scheduler_group_budget_usd", labels("claude-main", "claude", "daily"))] == 5
    assert samples[("cli_scheduler_group_budget_usd", labels("claude-main", "claude", "monthly"))] == 50
    assert samples[("cli_scheduler_group_spend_usd", labels("codex-team", "codex", "daily"))] == 0
    assert ("cli_scheduler_group_budget_usd", labels("codex-team", "codex", "daily")) not in samples
