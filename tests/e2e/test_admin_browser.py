"""A person's view: log into the admin in headless Chromium, open a running task, watch its output grow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_admin_task_page_shows_new_output_without_reloading(workers: WorkerProcesses, live_server) -> None:
    from playwright.sync_api import sync_playwright

    get_user_model().objects.create_superuser("ops", "", "correct horse battery")
    group_create(tool="claude", account="main")
    workers.start("control", concurrency=1, env={"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"})
    workers.start("claude-main", concurrency=1, env={"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"})
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("watch me", stdout_bytes=300, sleep=15)),
                          source="api")
    wait_until(lambda: task.runs.exists(), timeout=30, message="the run to start")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/tasks_app/task/{task.pk}/change/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "correct horse battery")
            page.click("input[type=submit]")
            page.wait_for_selector("#live-log .live-chunk", timeout=30_000)
            # A WSGI server does not stream (it answers follow=1 with 421): the panel polls instead.
            assert page.get_attribute("#live-log", "data-transport") == "polling"
            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url))
            first = page.inner_text("#live-log")
            assert "[stdout filler]" in first and '"type":"result"' not in first.replace(" ", "")
            # The final result is printed when the CLI ends: it must appear in place, with no reload.
            page.wait_for_function(
                "document.getElementById('live-log').textContent.replace(/ /g, '').includes('\"type\":\"result\"')",
                timeout=60_000)
            page.wait_for_function("document.getElementById('live-log-state').textContent.includes('succeeded')",
                                   timeout=30_000)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "admin-live-log.png"), full_page=True)
            assert navigations == []
        finally:
            browser.close()
    assert (SCREENSHOTS / "admin-live-log.png").stat().st_size > 10_000
