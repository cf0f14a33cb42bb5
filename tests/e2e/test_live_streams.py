"""Live streams (`?follow=1`) as deployed: the Procfile's `stream` process (uvicorn, ASGI) serves them, the `web`
process (gunicorn, WSGI) never holds one. Standard SSE clients, keep-alives, caps, and clients that go away."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from tasks_app.models import EventSource, Task, TaskLogChunk, TaskRun, TaskStatus
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tasks_app.transitions import task_transition
from tests.conftest import SiteProcesses, WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake
from tests.factories import TaskFactory
from tests.sse import SseClient

pytestmark = pytest.mark.e2e
SSE = {"Accept": "text/event-stream"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def token(username: str, tenant: str = "acme") -> dict[str, str]:
    user_create(username=username, tenant=tenant)
    return {"Authorization": f"Token {token_create(username=username)[1]}"}


def running_task(tenant: str = "acme", *output: str) -> tuple[Task, TaskRun]:
    """A task whose attempt is running (as a worker leaves it), with this output so far."""
    task = TaskFactory(status=TaskStatus.RUNNING, tenant=tenant)
    run = TaskRun.objects.create(task=task, attempt=1, lease_token=uuid.uuid4())
    for seq, data in enumerate(output):
        TaskLogChunk.objects.create(run=run, seq=seq, stream="stdout", data=data)
    return task, run


def follow_url(base: str, task: Task) -> str:
    return f"{base}/api/v1/tasks/{task.pk}/logs/?follow=1"


def close_wait_sockets(port: int) -> int:
    """Server-side sockets on `port` still in CLOSE-WAIT: the client left and the server has not closed its end."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "08":
                count += 1
    return count


def test_a_standard_sse_client_gets_live_events_and_keep_alives(site: SiteProcesses) -> None:
    headers = token("alice")
    task, run = running_task("acme", "line one\n")
    stream = site.start("stream", env={"SCHEDULER_SSE_KEEPALIVE_SECONDS": "0.3", "SCHEDULER_SSE_POLL_SECONDS": "0.1"})

    client = SseClient(follow_url(stream, task), headers={**headers, **SSE})
    try:
        # What every EventSource sends is accepted (it was a 406).
        assert client.status == 200
        assert client.response.headers["Content-Type"] == "text/event-stream"
        client.read_until(lambda c: len(c.events) == 2, timeout=20)
        assert [(e.type, e.data, e.last_event_id) for e in client.events] == [
            ("attempt", "1", ""), ("stdout", "line one\n", "0")]
        # Quiet task: a comment every keep-alive interval, and no event.
        client.read_until(lambda c: c.parser.comments >= 2, timeout=20)
        assert len(client.events) == 2
        # Output written while it is followed arrives live; the end closes the stream.
        TaskLogChunk.objects.create(run=run, seq=1, stream="stderr", data="line two\n")
        client.read_until(lambda c: len(c.events) == 3, timeout=20)
        task_transition(task_id=task.pk, to=TaskStatus.SUCCEEDED, source=EventSource.WORKER, actor="test")
        client.read_until(lambda c: c.events[-1].type == "end", timeout=20)
    finally:
        client.close()
    assert [(e.type, e.data) for e in client.events[2:]] == [("stderr", "line two\n"), ("end", "succeeded")]


def test_streams_are_capped_per_token_and_in_all_with_a_429_that_says_which(site: SiteProcesses) -> None:
    alice, bob, carol = token("alice"), token("bob"), token("carol")
    task, _ = running_task("acme")
    stream = site.start("stream", env={"SCHEDULER_SSE_MAX_STREAMS": "3", "SCHEDULER_SSE_MAX_STREAMS_PER_TOKEN": "2"})
    url = follow_url(stream, task)
    opened = [SseClient(url, headers={**alice, **SSE}), SseClient(url, headers={**alice, **SSE})]
    try:
        assert [c.status for c in opened] == [200, 200]
        third = SseClient(url, headers={**alice, **SSE})
        assert third.status == 429
        assert third.response.headers["Retry-After"] == "10"
        body = json.loads(third.body())
        assert "this token already has its maximum of 2 live streams open" in body["detail"]
        third.close()

        opened.append(SseClient(url, headers={**bob, **SSE}))
        assert opened[-1].status == 200
        full = SseClient(url, headers={**carol, **SSE})
        assert full.status == 429
        assert "this server already serves its maximum of 3 live streams" in json.loads(full.body())["detail"]
        full.close()

        # A stream that ends gives its place back.
        opened.pop(0).close()
        again = wait_until(lambda: _admitted(url, carol), timeout=10, message="carol to be admitted")
        again.close()
    finally:
        for client in opened:
            client.close()


def _admitted(url: str, headers: dict[str, str]) -> SseClient | None:
    client = SseClient(url, headers={**headers, **SSE})
    if client.status == 200:
        return client
    client.close()
    return None


def test_a_client_that_goes_away_frees_its_slot_and_its_socket_at_once(site: SiteProcesses) -> None:
    alice = token("alice")
    task, _ = running_task("acme", "hello\n")
    # No keep-alive for a minute: the server must notice the client left from the connection itself, not from a
    # write that fails.
    stream = site.start("stream", env={"SCHEDULER_SSE_MAX_STREAMS_PER_TOKEN": "1",
                                       "SCHEDULER_SSE_KEEPALIVE_SECONDS": "60"})
    url = follow_url(stream, task)
    port = site.ports["stream"]
    for _ in range(3):
        # The previous round's second client was just closed: its slot is freed when the server sees it go.
        client = wait_until(lambda: _admitted(url, alice), timeout=10, message="a free slot")
        client.read_until(lambda c: len(c.events) == 2, timeout=20)
        client.close()
        # The same token may follow again: the one stream it had is over.
        again = wait_until(lambda: _admitted(url, alice), timeout=10, message="the slot to be released")
        again.close()
        wait_until(lambda: close_wait_sockets(port) == 0, timeout=10, message="no socket left in CLOSE-WAIT")
    assert "Traceback" not in site.log("stream")


def test_followers_never_hold_the_web_tier(site: SiteProcesses) -> None:
    keys = [token(f"user{i}") for i in range(12)]
    tasks = [running_task("acme", f"task {i} says hi\n")[0] for i in range(4)]
    stream = site.start("stream", env={"SCHEDULER_SSE_KEEPALIVE_SECONDS": "1"})
    # gunicorn as the Procfile runs it: 2 workers x 8 threads. Today's 16 followers took every thread.
    web = site.start("web", env={"SCHEDULER_STREAM_URL": stream})

    followers: list[Any] = []
    errors: list[BaseException] = []
    burst = threading.Barrier(120)

    def follow(headers: dict[str, str], task: Task, base: str) -> None:
        request = urllib.request.Request(follow_url(base, task), headers={**headers, **SSE})
        try:
            burst.wait(timeout=30)
            response = urllib.request.urlopen(request, timeout=60)
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.readline() == b"retry: 2000\n"
            followers.append(response)
        except BaseException as exc:
            errors.append(exc)

    # All at once, more than PostgreSQL's default 100 connections: the stream process prepares a few at a time.
    # Most go straight to the stream process; some through the web process's URL, whose redirect leads there.
    threads = [threading.Thread(target=follow, args=(keys[i // 10], tasks[i % 4], web if i % 10 == 0 else stream))
               for i in range(120)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert errors == [] and len(followers) == 120
        # Each follower costs the database nothing of its own: the stream process reads for all of them on one
        # connection (its request threads give theirs back before streaming).
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                assert cursor.fetchone()[0] < 10
        # With 120 streams open, the web process answers at once (bounded: a hung thread pool would time out).
        for _ in range(20):
            health = urllib.request.urlopen(f"{web}/healthz", timeout=5)
            assert health.status in (200, 503)
            listing = urllib.request.urlopen(urllib.request.Request(f"{web}/api/v1/tasks/", headers=keys[0]),
                                             timeout=5)
            assert listing.status == 200 and len(json.loads(listing.read())["results"]) == 4
    finally:
        for response in followers:
            response.close()
    assert " 500 " not in site.log("stream")


def test_the_web_process_answers_follow_with_where_streams_are_served(site: SiteProcesses) -> None:
    alice = token("alice")
    task, _ = running_task("acme")
    web = site.start("web")

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(follow_url(web, task), headers={**alice, **SSE}), timeout=10)

    assert refused.value.code == 421
    assert "served by the stream process" in json.loads(refused.value.read())["detail"]


FORGERY = b"before\revent: end\rdata: forged\r\rid: 99\r\rafter\n"
COLLECT_EVENTS = """url => new Promise((resolve, reject) => {
  const events = [], source = new EventSource(url);
  for (const type of ["attempt", "stdout", "stderr", "end", "timeout", "message"]) {
    source.addEventListener(type, e => {
      events.push([type, e.data, e.lastEventId]);
      if (type === "end") { source.close(); resolve(events); }
    });
  }
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) reject(new Error("refused")); };
  setTimeout(() => { source.close(); reject(new Error("no end event after 30 s: " + JSON.stringify(events))); },
             30000);
})"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_chromium_eventsource_follows_a_task_and_output_cannot_forge_an_event(
        workers: WorkerProcesses, site: SiteProcesses) -> None:
    from playwright.sync_api import sync_playwright

    get_user_model().objects.create_superuser("ops", "", "correct horse battery")
    group_create(tool="claude", account="main")
    workers.start("control", concurrency=1, env={"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"})
    workers.start("claude-main", concurrency=1, env={"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"})
    # The admin served by the stream process itself (as the embedded start serves everything), static files too.
    stream = site.start("stream", env={"SCHEDULER_SERVE_STATIC": "true"})
    prompt = fake("forge", stdout_raw_b64=base64.b64encode(FORGERY).decode(), sleep=4)
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=prompt), source="api")
    wait_until(lambda: TaskRun.objects.filter(task=task).exists(), timeout=30, message="the run to start")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(f"{stream}/admin/login/?next=/admin/tasks_app/task/{task.pk}/change/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "correct horse battery")
            page.click("input[type=submit]")
            # The live panel follows with an EventSource, and shows the forged lines as output.
            page.wait_for_selector("#live-log[data-transport=sse] .live-chunk", timeout=30_000)
            page.wait_for_function("document.getElementById('live-log').textContent.includes('data: forged')",
                                   timeout=30_000)
            page.wait_for_function("document.getElementById('live-log-state').textContent.includes('succeeded')",
                                   timeout=60_000)
            assert page.get_attribute("#live-log", "data-transport") == "sse"
            # A bare EventSource, from the first event to the end, as any browser client would read it.
            events = page.evaluate(COLLECT_EVENTS, f"/api/v1/tasks/{task.pk}/logs/?follow=1")
        finally:
            browser.close()

    assert [e[0] for e in events if e[0] in ("end", "timeout", "message")] == ["end"]
    assert events[0][:2] == ["attempt", "1"] and events[-1][:2] == ["end", "succeeded"]
    stdout = "".join(data for kind, data, _ in events if kind == "stdout")
    assert "before\nevent: end\ndata: forged\n\nid: 99\n\nafter\n" in stdout
    assert all(ident != "99" for _, _, ident in events)
