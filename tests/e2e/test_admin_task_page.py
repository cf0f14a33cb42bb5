"""The task page as an operator uses it, in headless Chromium against the real site process (the Procfile's
`stream`, serving the whole site as the one-command start does), real workers and the stand-in CLIs: the live
timeline, the buttons (each recording the operator), a missing output, the task list at 1366 px. Each main screen
is saved under var/screenshots/ (docs/screenshots/ holds the ones the README shows)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import SiteProcesses, WorkerProcesses, wait_until
from tests.e2e.test_admin_browser import CHROMIUM, SCREENSHOTS
from tests.e2e.test_pipeline import fake, wait_terminal

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")]
VIEWPORT = {"width": 1366, "height": 768}  # the smallest laptop screen an operator watches jobs on
OPERATOR, PASSWORD = "ops", "correct horse battery"
WAIT_MS = 30_000  # Playwright's waits: every one is bounded


@pytest.fixture
def site_url(workers: WorkerProcesses, site: SiteProcesses, tmp_path: Path) -> str:
    """An operator, the claude-main and codex-main groups with a worker and the control worker, and the site."""
    get_user_model().objects.create_superuser(OPERATOR, "", PASSWORD)
    # FAKE_CLI_STATE: where the stand-in remembers a `once_key` (inside the sandbox's read-write paths).
    group_create(tool="claude", account="main", max_concurrent=2, env={"FAKE_CLI_STATE": str(tmp_path)})
    group_create(tool="codex", account="main")
    fast = {"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"}
    workers.start("control", concurrency=1, env=fast)
    workers.start("claude-main,codex-main", concurrency=3, env=fast)
    return site.start("stream", env={"SCHEDULER_SERVE_STATIC": "true"})


@contextmanager
def operator_page(base_url: str) -> Iterator[Any]:
    """A logged-in operator's page, 1366x768."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{base_url}/admin/login/?next=/admin/")
            page.fill("#id_username", OPERATOR)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base_url}/admin/")
            yield page
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def task_page(base_url: str, task: Task) -> str:
    return f"{base_url}/admin/tasks_app/task/{task.pk}/change/"


def last_event(task: Task) -> TaskEvent:
    return TaskEvent.objects.filter(task=task).order_by("created_at", "id").last()


def test_a_running_tasks_timeline_grows_without_a_reload_and_cancel_stops_it_as_the_operator(
        site_url: str) -> None:
    from playwright.sync_api import expect

    # codex: its cost is estimated from each turn's tokens, so the header's cost moves while it runs.
    task, _ = task_create(spec=TaskSpec(tool="codex", model="gpt-5", prompt=fake(
        "Refactor the config loader into small functions and keep the tests green", turns=40, turn_delay=0.5)),
        source="api")
    wait_until(lambda: Task.objects.filter(pk=task.pk, status="running").exists(), timeout=30,
               message="the task to run")

    with operator_page(site_url) as page:
        page.goto(task_page(site_url, task))
        expect(page.locator("#task-status")).to_have_text("running")
        expect(page.locator("#task-cancel-button")).to_be_visible()
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        rows = page.locator("#timeline tr.timeline-event")
        expect(rows.nth(2)).to_be_attached()
        seen = rows.count()
        expect(rows.nth(seen + 2)).to_be_attached()  # new rows, in place
        expect(page.locator("#timeline tr.timeline-tool_call").first).to_contain_text("echo step")
        expect(page.locator("#task-cost")).to_have_text(re.compile(r"^\$0\.\d{4} \(estimate\)$"))
        tokens = page.inner_text("#task-tokens")
        expect(page.locator("#task-tokens")).not_to_have_text(tokens)  # each turn's usage event, in place
        elapsed = page.inner_text("#task-elapsed")
        expect(page.locator("#task-elapsed")).not_to_have_text(elapsed)  # ticks
        assert navigations == []
        screenshot(page, "admin-task-running")

        page.click("#task-cancel-button")
        expect(page.locator("ul.messagelist")).to_contain_text("Cancel requested")
        expect(page.locator("#task-cancel-requested")).to_contain_text(f"by {OPERATOR}")
        # The worker kills the run; the page, still following the task, says so.
        expect(page.locator("#task-status")).to_have_text("canceled", timeout=60_000)
        expect(page.locator("#task-finished-note")).to_be_visible()
        page.reload()
        expect(page.locator("#task-retry-button")).to_be_visible()

    assert wait_terminal(task.pk)[0].status == "canceled"
    requested = TaskEvent.objects.get(task=task, data__cancel_requested=True)
    assert (requested.source, requested.actor) == ("admin", OPERATOR)
    canceled = last_event(task)
    assert (canceled.from_status, canceled.to_status, canceled.source, canceled.actor) == (
        "running", "canceled", "admin", OPERATOR)


def test_retry_and_requeue_now_on_the_page_start_the_task_again_as_the_operator(
        site_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    flaky, _ = task_create(spec=TaskSpec(
        tool="claude", output_files=["hello.py"], prompt=fake(
            "Write hello.py that prints a greeting", scenario="exit", once_key=f"retry-{uuid.uuid4()}",
            write={"hello.py": "print('hello')\n"}, answer="Wrote hello.py: it prints a greeting.")),
        source="api")
    later, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("Nightly report, held for two hours"),
                                         scheduled_at=timezone.now() + timedelta(hours=2)), source="api")
    (failed,) = wait_terminal(flaky.pk, timeout=60)
    assert failed.status == "failed"

    with operator_page(site_url) as page:
        page.goto(task_page(site_url, flaky))
        expect(page.locator("#task-error")).to_contain_text("exit")
        page.click("#task-retry-button")
        expect(page.locator("ul.messagelist")).to_contain_text("Re-queued with a fresh attempt budget")
        # (The ORM cannot be used here, inside Playwright's event loop: the page follows the task instead.)
        expect(page.locator("#task-status")).to_have_text("succeeded", timeout=60_000)
        page.reload()
        expect(page.locator("#task-final-message")).to_have_text("Wrote hello.py: it prints a greeting.")
        expect(page.locator("#task-attempt")).to_have_text("1 of 3 (2 in all)")
        expect(page.locator("#task-buttons")).to_have_count(0)
        screenshot(page, "admin-task-finished")

        page.goto(task_page(site_url, later))
        expect(page.locator("#task-waiting")).to_contain_text("its scheduled time")
        page.click("#task-requeue-now-button")
        expect(page.locator("ul.messagelist")).to_contain_text("Re-queued now")
        expect(page.locator("#task-status")).to_have_text("succeeded", timeout=60_000)

    assert [task.status for task in wait_terminal(flaky.pk, later.pk)] == ["succeeded", "succeeded"]
    assert later.runs.count() == 1
    retried = TaskEvent.objects.get(task=flaky, from_status="failed", to_status="queued")
    assert (retried.source, retried.actor) == ("admin", OPERATOR)
    requeued = TaskEvent.objects.get(task=later, data__requeue_now=True)
    assert (requeued.source, requeued.actor, requeued.to_status) == ("admin", OPERATOR, "queued")


def test_a_missing_output_the_list_at_1366_px_and_the_main_screens(site_url: str) -> None:
    from playwright.sync_api import expect

    missing, _ = task_create(spec=TaskSpec(tool="claude", output_files=["hello.py"], prompt=fake(
        "Write hello.py that prints a greeting (this stand-in writes nothing)")), source="api")
    others = [task_create(spec=TaskSpec(tool="claude", prompt=fake(prompt, **directive)), source="api")[0]
              for prompt, directive in (
                  ("Summarise the open issues labelled 'bug' and group them by component, most urgent first",
                   {}),
                  ("Upgrade the HTTP client to the next major version and fix whatever breaks in the tests", {}),
                  ("Run the linter on the whole repository and fix every warning it reports", {"scenario": "exit"}),
              )]
    wait_terminal(missing.pk, *(task.pk for task in others), timeout=90)

    with operator_page(site_url) as page:
        page.goto(task_page(site_url, missing))
        warning = page.locator("#task-missing-outputs")
        expect(warning).to_be_visible()
        expect(warning).to_contain_text("not produced")
        expect(warning.locator("code")).to_have_text(["hello.py"])
        assert warning.bounding_box()["y"] < VIEWPORT["height"]  # in the header: seen without scrolling
        screenshot(page, "admin-task-missing-output")

        page.goto(f"{site_url}/admin/tasks_app/task/")
        for cell in ("td.field-prompt_excerpt", "td.field-finished_at"):
            first = page.locator(f"#result_list tbody tr:first-child {cell}")
            expect(first).to_be_visible()
            box = first.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"], (cell, box)
        expect(page.locator("#result_list td.field-finished_at").first).to_have_text(
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))  # seconds, sortable by eye
        screenshot(page, "admin-task-list")

        page.goto(f"{site_url}/admin/dashboard/")
        expect(page.locator("#cockpit-status")).to_be_visible()
        screenshot(page, "admin-dashboard")

        page.goto(f"{site_url}/admin/tasks_app/workergroup/")
        page.locator("#result_list").get_by_role("link", name="claude-main", exact=True).click()
        expect(page.locator(".field-name .help")).to_contain_text("<tool>-<account>; the Celery queue name.")
        screenshot(page, "admin-group")
