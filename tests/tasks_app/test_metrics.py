from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from executors import ExecutionResult
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.runs import run_finish, run_start
from tasks_app.services.tasks import TaskSpec, task_create
from tests.factories import WorkerGroupFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_cache(settings) -> None:
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def run_one_job(*, failure_kind: str = "", tokens: tuple[int, int] = (100, 20)) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", max_attempts=1), source="api")
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w", result=ExecutionResult(
        command=[], exit_code=0 if not failure_kind else 1, failure_kind=failure_kind, input_tokens=tokens[0],
        output_tokens=tokens[1], cost_usd=0.25, latency_ms=2500))


def test_metrics_parse_and_counters_move_after_a_job_runs(client) -> None:
    WorkerGroupFactory(account="main", max_concurrent=4)
    before = scrape(client)
    run_one_job()
    run_one_job(failure_kind="exit_code")
    task_create(spec=TaskSpec(tool="claude", prompt="waiting"), source="api")

    after = scrape(client)

    group = ("worker_group", "claude-main")
    succeeded = ("cli_scheduler_runs_total", (("failure_kind", ""), ("status", "succeeded"), ("tool", "claude"), group))
    assert before.get(succeeded, 0) == 0 and after[succeeded] == 1
    failed = ("cli_scheduler_runs_total", (("failure_kind", "exit_code"), ("status", "failed"), ("tool", "claude"),
                                          group))
    assert after[failed] == 1
    assert after[("cli_scheduler_tokens_total", (("direction", "input"), group))] == 200
    assert after[("cli_scheduler_cost_usd_total", (group,))] == 0.5
    assert after[("cli_scheduler_run_duration_seconds_count", (("tool", "claude"),))] == 2
    assert after[("cli_scheduler_run_duration_seconds_bucket", (("le", "5.0"), ("tool", "claude")))] == 2
    assert after[("cli_scheduler_run_duration_seconds_bucket", (("le", "1.0"), ("tool", "claude")))] == 0
    assert after[("cli_scheduler_queue_depth", (("tool", "claude"), ("worker_group", "")))] == 1
    assert after[("cli_scheduler_group_capacity", (("tool", "claude"), group))] == 4
    assert after[("cli_scheduler_tasks", (("status", "succeeded"), ("tool", "claude"), group))] == 1


def test_retries_are_counted_by_failure_kind(client, settings) -> None:
    WorkerGroupFactory(account="main", max_concurrent=4)
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", max_attempts=3), source="api")
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], failure_kind="provider_error", error_message="500"))

    assert scrape(client)[("cli_scheduler_retries_total", (("failure_kind", "provider_error"),))] == 1


def test_metrics_are_protected_by_allow_list_or_token(client, settings) -> None:
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    settings.SCHEDULER_METRICS_ALLOW = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    settings.SCHEDULER_METRICS_TOKEN = "scrape-token"
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403  # a token, once set, is required
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token").status_code == 200
