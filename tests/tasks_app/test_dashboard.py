from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tasks_app import stats, svg
from tasks_app.models import Task, TaskRun, TaskStatus, WorkerGroup
from tests.factories import TaskFactory, WorkerGroupFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def _run(task: Task, *, group: WorkerGroup | None, status: str, finished_at: datetime | None,
         latency_ms: int | None = None, tokens: tuple[int | None, int | None] = (None, None),
         cost: str | None = None, failure_kind: str = "", stderr: str = "", attempt: int | None = None) -> TaskRun:
    attempt = attempt if attempt is not None else task.runs.count() + 1
    return TaskRun.objects.create(
        task=task, attempt=attempt, worker_group=group, lease_token=uuid.uuid4(), status=status,
        started_at=(finished_at or NOW) - timedelta(seconds=5), finished_at=finished_at, latency_ms=latency_ms,
        input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=Decimal(cost) if cost else None,
        failure_kind=failure_kind, stderr=stderr,
    )


def _history() -> dict[str, Any]:
    """Two groups and a known mix of runs around NOW (2025-03-10 12:00 UTC)."""
    claude = WorkerGroupFactory(tool="claude", account="main", max_concurrent=2)
    codex = WorkerGroupFactory(tool="codex", account="team", max_concurrent=1,
                               rate_limited_until=NOW + timedelta(minutes=10))
    WorkerGroupFactory(tool="gemini", account="old", enabled=False, rate_limited_until=NOW - timedelta(hours=1))
    TaskFactory(status=TaskStatus.RUNNING, worker_group=claude)
    TaskFactory(status=TaskStatus.LEASED, worker_group=claude)
    TaskFactory(status=TaskStatus.QUEUED, worker_group=claude, worker_group_pinned=True)
    TaskFactory(status=TaskStatus.QUEUED, tool="codex")
    TaskFactory(status=TaskStatus.QUEUED, tool="codex")

    ok = TaskFactory(status=TaskStatus.SUCCEEDED, worker_group=claude)
    hour = timedelta(hours=1)
    _run(ok, group=claude, status="succeeded", finished_at=NOW - hour, latency_ms=1000, tokens=(100, 10), cost="0.01")
    _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=claude, status="succeeded", finished_at=NOW - 2 * hour,
         latency_ms=3000, tokens=(100, 10), cost="0.01")
    timed_out = TaskFactory(status=TaskStatus.FAILED, attempt=1, error_message="Timed out after 60 s\nkilled")
    _run(timed_out, group=claude, status="failed", finished_at=NOW - 3 * hour, latency_ms=500, tokens=(100, 10),
         cost="0.01", failure_kind="timeout")
    # Outside the 24 h window, inside the 7 days; then the window's edges.
    _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=claude, status="succeeded", finished_at=NOW - 25 * hour,
         latency_ms=99_999, tokens=(1000, 0), cost="0.5")
    _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=claude, status="succeeded",
         finished_at=datetime(2025, 3, 4, 0, 0, tzinfo=UTC), tokens=(7, 3), cost="0.000001")
    _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=claude, status="succeeded",
         finished_at=datetime(2025, 3, 3, 23, 59, 59, tzinfo=UTC), tokens=(5000, 5000), cost="9")
    _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=claude, status="succeeded", finished_at=NOW + hour,
         latency_ms=1, tokens=(5000, 5000), cost="9")
    _run(TaskFactory(status=TaskStatus.RUNNING), group=claude, status="running", finished_at=None)

    codex_task = TaskFactory(tool="codex", status=TaskStatus.FAILED, attempt=3, error_message="Timed out (latest)")
    _run(codex_task, group=codex, status="succeeded", finished_at=NOW - 5 * hour, latency_ms=700,
         tokens=(200, 20), cost="0.02", attempt=1)
    _run(codex_task, group=codex, status="failed", finished_at=NOW - 4 * hour, failure_kind="rate_limited",
         stderr="warn: slow\nError: 429 <too many> & more\n\n", attempt=2)
    _run(codex_task, group=codex, status="failed", finished_at=NOW - 2 * hour, latency_ms=60_000,
         tokens=(200, 20), cost="0.02", failure_kind="timeout", attempt=3)
    _run(TaskFactory(tool="gemini", status=TaskStatus.CANCELED), group=None, status="canceled",
         finished_at=NOW - hour, failure_kind="canceled", tokens=(1, 1))
    return {"claude": claude, "codex": codex, "timed_out": timed_out, "codex_task": codex_task}


# --- stats ----------------------------------------------------------------------------------------


def test_task_status_counts_lists_every_status_in_order() -> None:
    _history()

    counts = stats.task_status_counts()

    assert counts == [("queued", 3), ("leased", 1), ("running", 2), ("succeeded", 6), ("failed", 2),
                      ("canceled", 1)]


def test_group_loads_count_running_queued_and_current_rate_limits() -> None:
    _history()

    loads = {group.name: group for group in stats.group_loads(now=NOW)}

    assert [(g.running, g.max_concurrent, g.queued, g.enabled, g.rate_limited) for g in loads.values()] == [
        (2, 2, 1, True, False), (0, 1, 0, True, True), (0, 1, 0, False, False)]
    assert list(loads) == ["claude-main", "codex-team", "gemini-old"]
    assert loads["claude-main"].utilisation_percent == 100
    assert stats.queued_without_group() == [("codex", 2)]


def test_tool_health_is_success_rate_and_median_latency_over_24_hours() -> None:
    _history()

    health = {tool.tool: tool for tool in stats.tool_health(now=NOW)}

    assert [(t.tool, t.finished, t.succeeded, t.median_latency_ms) for t in health.values()] == [
        ("claude", 3, 2, 2000.0), ("codex", 3, 1, 700.0), ("gemini", 1, 0, None)]
    assert f"{health['claude'].success_percent:.1f}" == "66.7"
    assert f"{health['codex'].success_percent:.1f}" == "33.3"
    assert health["gemini"].success_percent == 0


def test_tool_health_median_of_an_odd_count_and_an_idle_tool() -> None:
    group = WorkerGroupFactory(tool="claude", account="main")
    for latency in (10, 400, 30):
        _run(TaskFactory(), group=group, status="succeeded", finished_at=NOW - timedelta(minutes=5),
             latency_ms=latency)

    health = stats.tool_health(now=NOW)

    assert [(t.tool, t.finished, t.median_latency_ms, t.success_percent) for t in health] == [
        ("claude", 3, 30.0, 100.0), ("codex", 0, None, None), ("gemini", 0, None, None)]


def test_daily_usage_sums_tokens_and_cost_per_group_per_utc_day_the_runs_started_over_7_days() -> None:
    history = _history()
    # The first second of the window: started 2025-03-04 00:00:00. (The history's runs that finished at 03-04 00:00
    # and 03-03 23:59:59 started on 03-03: outside, as the daily budgets count them.)
    _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=history["claude"], status="succeeded",
         finished_at=datetime(2025, 3, 4, 0, 0, 5, tzinfo=UTC), tokens=(7, 3), cost="0.000001")

    usage = stats.daily_usage(now=NOW)

    # 03-10 claude-main: three finished before NOW, the running one (no cost yet), and the one started at 12:59:55.
    assert [(u.day, u.group, u.runs, u.input_tokens, u.output_tokens, u.tokens, u.cost_usd) for u in usage] == [
        (date(2025, 3, 4), "claude-main", 1, 7, 3, 10, Decimal("0.000001")),
        (date(2025, 3, 9), "claude-main", 1, 1000, 0, 1000, Decimal("0.5")),
        (date(2025, 3, 10), "claude-main", 5, 5300, 5030, 10330, Decimal("9.03")),
        (date(2025, 3, 10), "codex-team", 3, 400, 40, 440, Decimal("0.04")),
        (date(2025, 3, 10), "(no group)", 1, 1, 1, 2, Decimal(0)),
    ]
    assert stats.usage_days(now=NOW) == [date(2025, 3, day) for day in range(4, 11)]


def test_failures_are_counted_by_kind_and_listed_newest_first_with_one_line_errors() -> None:
    history = _history()

    counts = stats.failure_counts(now=NOW)
    recent = stats.recent_failures(now=NOW)

    assert counts == [("timeout", 2), ("rate_limited", 1)]
    assert [(r.task_id, r.attempt, r.group, r.failure_kind, r.finished_at, r.error) for r in recent] == [
        (history["codex_task"].pk, 3, "codex-team", "timeout", NOW - timedelta(hours=2), "Timed out (latest)"),
        (history["timed_out"].pk, 1, "claude-main", "timeout", NOW - timedelta(hours=3), "Timed out after 60 s"),
        (history["codex_task"].pk, 2, "codex-team", "rate_limited", NOW - timedelta(hours=4),
         "Error: 429 <too many> & more"),
    ]


def test_recent_failures_keep_only_the_ten_newest_and_shorten_long_errors() -> None:
    group = WorkerGroupFactory(tool="claude", account="main")
    for minutes in range(12):
        task = TaskFactory(status=TaskStatus.FAILED, attempt=1, error_message="x" * 500 if minutes == 0 else "")
        _run(task, group=group, status="failed", finished_at=NOW - timedelta(minutes=minutes),
             failure_kind="exit_code")

    recent = stats.recent_failures(now=NOW)

    assert len(recent) == 10
    assert [r.finished_at for r in recent] == [NOW - timedelta(minutes=m) for m in range(10)]
    assert recent[0].error == "x" * 139 + "…"
    assert recent[1].error == "-"


def test_dashboard_is_a_fixed_number_of_queries(django_assert_max_num_queries: Any) -> None:
    _history()

    with django_assert_max_num_queries(10):  # one of them: every group's spend, for its health and budgets
        data = stats.dashboard(now=NOW)

    assert data.now == NOW and len(data.recent_failures) == 3


def test_dashboard_on_an_empty_database() -> None:
    data = stats.dashboard(now=NOW)

    assert data.status_counts == [(status, 0) for status in TaskStatus.values]
    assert data.groups == [] and data.usage == [] and data.failure_counts == [] and data.recent_failures == []
    assert [(t.finished, t.median_latency_ms) for t in data.tools] == [(0, None)] * 3


# --- svg ------------------------------------------------------------------------------------------

NASTY = 'a<b & "c">\'d'


def _parse(markup: str) -> ET.Element:
    root = ET.fromstring(markup)
    assert root.tag == f"{SVG}svg"
    return root


def _texts(root: ET.Element) -> list[str]:
    return [element.text or "" for element in root.iter(f"{SVG}text")]


def test_bar_chart_is_well_formed_and_escapes_labels() -> None:
    markup = svg.bar_chart([(NASTY, 3), ("ok", 1)], title=f"t {NASTY}")

    root = _parse(markup)

    assert NASTY in _texts(root) and "3" in _texts(root)
    assert root.find(f"{SVG}title").text == f"t {NASTY}"
    assert "<b" not in markup and "a&lt;b &amp; &quot;c&quot;&gt;" in markup
    widths = [float(rect.get("width")) for rect in root.iter(f"{SVG}rect")]
    assert widths == [340, 340, 340, 113.3]  # track, bar, track, bar: 3 is the full span


def test_bar_chart_with_zeros_a_maximum_and_no_rows() -> None:
    root = _parse(svg.bar_chart([("a", 0), ("b", 0)], title="zeros"))
    assert [float(r.get("width")) for r in root.iter(f"{SVG}rect")] == [340, 0, 340, 0]

    root = _parse(svg.bar_chart([("rate", 50.0)], title="pct", maximum=100, format_value=lambda v: f"{v:.1f}%"))
    assert [float(r.get("width")) for r in root.iter(f"{SVG}rect")] == [340, 170]
    assert "50.0%" in _texts(root)

    assert _texts(_parse(svg.bar_chart([], title="none"))) == ["no data"]


def test_stacked_bar_splits_each_row_by_its_own_total() -> None:
    root = _parse(svg.stacked_bar([(NASTY, (1, 3), "1/4"), ("idle", (0, 0), "0/0")], series=("running", "<free>"),
                                  title="load"))

    widths = [float(r.get("width")) for r in root.iter(f"{SVG}rect")]
    assert widths[:3] == [340, 85, 255]
    assert widths[3:6] == [340, 0, 0]
    assert {NASTY, "1/4", "running", "<free>"} <= set(_texts(root))


def test_column_chart_stacks_series_per_day_and_labels_totals() -> None:
    markup = svg.column_chart(["Mon", "Tue<"], [("acct&1", [100, 0]), ("acct2", [300, 200])], title="tokens")

    root = _parse(markup)

    heights = [float(r.get("height")) for r in root.iter(f"{SVG}rect") if r.get("height") != "10"]
    assert heights == [40, 120, 80]  # 400 is the full 160 px
    assert {"400", "200", "Mon", "Tue<", "acct&1", "acct2"} <= set(_texts(root))
    assert _texts(_parse(svg.column_chart(["Mon"], [("a", [0])], title="idle"))) == ["no data"]
    assert _texts(_parse(svg.column_chart([], [], title="nothing"))) == ["no data"]


def test_compact_numbers() -> None:
    assert [svg.compact(v) for v in (0, 3.0, 2.5, 999, 1234, 2_500_000, 3e9)] == [
        "0", "3", "2.5", "999", "1.2k", "2.5M", "3G"]


# --- the page -------------------------------------------------------------------------------------

URL = "/admin/dashboard/"


def test_dashboard_url_is_registered_in_the_admin() -> None:
    assert reverse("admin:cockpit-dashboard") == URL


def test_dashboard_shows_the_computed_figures_and_charts(admin_client: Client) -> None:
    now = timezone.now()
    group = WorkerGroupFactory(tool="claude", account="main", max_concurrent=4)
    TaskFactory(status=TaskStatus.RUNNING, worker_group=group)
    for latency in (1200, 1800):
        _run(TaskFactory(status=TaskStatus.SUCCEEDED), group=group, status="succeeded",
             finished_at=now - timedelta(seconds=30), latency_ms=latency, tokens=(1000, 234), cost="0.125")
    failed = TaskFactory(status=TaskStatus.FAILED, attempt=1, error_message="<script>alert(1)</script> boom")
    _run(failed, group=group, status="failed", finished_at=now - timedelta(seconds=30), latency_ms=10,
         tokens=(0, 0), failure_kind="timeout")
    day = timezone.localdate(now - timedelta(seconds=35))  # the UTC day the runs started

    response = admin_client.get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert "66.7%" in html
    assert "1,500 ms" in html
    assert (f"<tr><td>{day:%Y-%m-%d}</td><td>claude-main</td><td class=\"num\">3</td>\n"
            f"            <td class=\"num\">2,000</td><td class=\"num\">468</td>\n"
            f"            <td class=\"num\">2,468</td><td class=\"num\">0.2500</td></tr>") in html
    assert "1 / 4" in html and "25%" in html
    assert 'failure_kind=timeout">timeout</a></td>\n            <td class="num">1</td>' in html
    assert reverse("admin:tasks_app_task_change", args=[failed.pk]) in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; boom" in html and "<script>alert" not in html
    assert html.count('class="cockpit-chart"') == 6


def test_dashboard_renders_with_an_empty_database(admin_client: Client) -> None:
    response = admin_client.get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert "No worker groups." in html and "No failed runs." in html
    assert html.count('class="cockpit-chart"') == 6 and "no data" in html


@pytest.mark.parametrize("staff", [False, None])
def test_dashboard_redirects_non_staff_to_the_login(client: Client, staff: bool | None) -> None:
    if staff is not None:
        user = get_user_model().objects.create_user("plain", password="pw", is_staff=staff)
        client.force_login(user)

    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={URL}"


def test_admin_index_links_to_the_dashboard(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert f'href="{URL}"' in response.content.decode()
