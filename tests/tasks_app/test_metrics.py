from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

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


class _ReverseProxy(BaseHTTPRequestHandler):
    """What nginx's `proxy_pass` does for a GET: forward it from this host, adding X-Forwarded-For/-Proto."""

    upstream: tuple[str, int]

    def do_GET(self) -> None:
        headers = {name: value for name, value in self.headers.items() if name.lower() not in ("host", "connection")}
        headers["X-Forwarded-For"] = self.client_address[0]
        headers["X-Forwarded-Proto"] = "https"
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            upstream.request("GET", self.path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        self.send_header("Content-Type", response.getheader("Content-Type", "text/plain"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def reverse_proxy(live_server) -> Iterator[str]:
    """A reverse proxy on 127.0.0.1 in front of the live server: every request the app sees comes from loopback."""
    target = urlsplit(live_server.url)
    handler = type("Proxy", (_ReverseProxy,), {"upstream": (target.hostname, target.port)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def get(url: str, **headers: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


@pytest.mark.django_db(transaction=True)
def test_through_a_local_reverse_proxy_only_the_token_admits_a_scrape(reverse_proxy, live_server, settings) -> None:
    # No token: a scraper on this box is admitted by address, but the proxy's loopback address admits no one.
    direct = get(f"{live_server.url}/metrics")
    proxied = get(f"{reverse_proxy}/metrics")
    assert direct[0] == 200 and "cli_scheduler_tasks" in direct[1]
    assert proxied[0] == 403 and "cli_scheduler" not in proxied[1]

    settings.SCHEDULER_METRICS_TOKEN = "scrape-token-through-proxy"
    without = get(f"{reverse_proxy}/metrics")
    wrong = get(f"{reverse_proxy}/metrics", Authorization="Bearer nope")
    with_token = get(f"{reverse_proxy}/metrics", Authorization="Bearer scrape-token-through-proxy")

    assert without[0] == 403 and wrong[0] == 403
    assert "scrape-token-through-proxy" not in without[1] + wrong[1]
    assert with_token[0] == 200 and "cli_scheduler_tasks" in with_token[1]


def test_a_forwarded_request_from_an_allowed_address_still_needs_the_token(client, settings) -> None:
    settings.SCHEDULER_METRICS_ALLOW = ["10.0.0.0/8"]

    for header in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"):
        assert client.get("/metrics", REMOTE_ADDR="10.1.2.3", **{header: "203.0.113.9"}).status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
