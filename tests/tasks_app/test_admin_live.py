from __future__ import annotations

import pytest

from tasks_app.models import TaskRun
from tasks_app.services.runs import run_log_append
from tests.factories import TaskFactory

pytestmark = pytest.mark.django_db


def test_task_page_has_the_live_panel_and_the_endpoint_returns_new_chunks(admin_client) -> None:
    task = TaskFactory(status="running")
    run = TaskRun.objects.create(task=task, attempt=1, lease_token=task.pk)
    run_log_append(run_id=run.pk, chunks=[("stdout", "line one\n"), ("stderr", "warn\n"), ("stdout", "two\n")],
                   first_seq=0)

    page = admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/")
    first = admin_client.get(f"/admin/tasks_app/task/{task.pk}/live-log/").json()
    later = admin_client.get(f"/admin/tasks_app/task/{task.pk}/live-log/?after=2").json()

    assert page.status_code == 200 and b'id="live-log"' in page.content
    assert (first["status"], first["terminal"], first["attempt"]) == ("running", False, 1)
    assert [(c["seq"], c["stream"], c["data"]) for c in first["chunks"]] == [
        (0, "stdout", "line one\n"), (1, "stderr", "warn\n"), (2, "stdout", "two\n")]
    assert [c["seq"] for c in later["chunks"]] == [2]
    assert admin_client.get(f"/admin/tasks_app/task/{task.pk}/live-log/?after=abc").json()["chunks"][0]["seq"] == 0


def test_live_log_needs_staff(client) -> None:
    task = TaskFactory()
    response = client.get(f"/admin/tasks_app/task/{task.pk}/live-log/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_group_pages_show_the_workers_heartbeating_for_it(admin_client) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import WorkerGroupFactory

    group = WorkerGroupFactory(account="main")
    live = TaskFactory(status="running", worker_group=group, lease_expires_at=timezone.now() + timedelta(minutes=1))
    TaskRun.objects.create(task=live, attempt=1, lease_token=live.pk, worker_group=group, worker="box-a:101")
    stale = TaskFactory(status="running", worker_group=group, lease_expires_at=timezone.now() - timedelta(minutes=1))
    TaskRun.objects.create(task=stale, attempt=1, lease_token=stale.pk, worker_group=group, worker="box-b:202")

    detail = admin_client.get(f"/admin/tasks_app/workergroup/{group.pk}/change/").content.decode()

    assert "box-a:101" in detail
    assert "box-b:202" not in detail  # its lease expired: not heartbeating any more
    assert "test-claude-main@box" in detail  # the live worker registered on its queue (the factory's)


def test_every_model_is_in_the_admin_and_its_changelist_renders(admin_client) -> None:
    from django.apps import apps
    from django.contrib import admin

    for model in apps.get_app_config("tasks_app").get_models():
        assert admin.site.is_registered(model), model.__name__
        url = f"/admin/tasks_app/{model._meta.model_name}/"
        assert admin_client.get(url).status_code == 200, url
