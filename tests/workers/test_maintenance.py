from __future__ import annotations

import os
import time

import pytest

from tests.factories import TaskFactory
from workers.maintenance import prune_processed_messages, stale_work_dirs_remove

pytestmark = pytest.mark.django_db


def test_stale_work_dirs_are_removed_and_running_ones_kept(tmp_path, settings) -> None:
    settings.SCHEDULER_KEEP_WORK_DIRS = False
    running = TaskFactory(status="running", attempt=2)
    finished = TaskFactory(status="succeeded", attempt=1)
    for name in (f"{running.pk}-2", f"{running.pk}-1", f"{finished.pk}-1", "not-ours"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text("x")

    removed = stale_work_dirs_remove(tmp_path)

    assert sorted(removed) == sorted([f"{running.pk}-1", f"{finished.pk}-1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{running.pk}-2", "not-ours"])


def test_a_stale_runs_git_scratch_dir_goes_with_its_work_dir(tmp_path, settings) -> None:
    settings.SCHEDULER_KEEP_WORK_DIRS = False
    running = TaskFactory(status="running", attempt=1)
    finished = TaskFactory(status="failed", attempt=1)
    for name in (f"{running.pk}-1.git", f"{finished.pk}-1.git"):
        (tmp_path / name / "home").mkdir(parents=True)

    removed = stale_work_dirs_remove(tmp_path)

    assert removed == [f"{finished.pk}-1.git"]
    assert [p.name for p in tmp_path.iterdir()] == [f"{running.pk}-1.git"]


def test_keep_work_dirs_setting_keeps_everything(tmp_path, settings) -> None:
    settings.SCHEDULER_KEEP_WORK_DIRS = True
    task = TaskFactory(status="failed", attempt=1)
    (tmp_path / f"{task.pk}-1").mkdir()

    assert stale_work_dirs_remove(tmp_path) == []
    assert (tmp_path / f"{task.pk}-1").is_dir()


def test_processed_broker_files_are_pruned_only_when_old(tmp_path, settings) -> None:
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.EMBEDDED_BROKER_PROCESSED_DIR = tmp_path
    old, new = tmp_path / "old.msg", tmp_path / "new.msg"
    old.write_text("{}")
    new.write_text("{}")
    past = time.time() - 3600
    os.utime(old, (past, past))

    assert prune_processed_messages(max_age_seconds=600) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["new.msg"]
