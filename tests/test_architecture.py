"""The layers are one-way (docs/architecture.md): checked here at run time, and by `make lint` (import-linter)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=120)


def test_executors_import_with_no_django_settings_and_pull_in_neither_django_nor_celery() -> None:
    result = _python(
        "import sys, executors, executors.runner\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'celery', 'kombu', 'tasks_app', 'workers'}))"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_web_process_never_imports_the_runner_or_the_celery_tasks() -> None:
    result = _python(
        "import sys, django\n"
        "django.setup()\n"
        "from django.urls import get_resolver\n"
        "from scheduler_site.wsgi import application\n"
        "get_resolver().url_patterns\n"  # every view module, the admin included
        "from tasks_app.services.enqueue import enqueue_dispatch\n"
        "print(sorted(m for m in ('executors.runner', 'workers.tasks', 'workers.execution') if m in sys.modules))",
        DJANGO_SETTINGS_MODULE="scheduler_site.settings",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_task_name_the_domain_sends_is_registered_on_the_worker_app() -> None:
    from django.conf import settings

    from tasks_app.services import enqueue
    from workers.celery import app

    app.loader.import_default_modules()  # what a worker does at start: autodiscovers workers.tasks

    sent = set(enqueue.TASK_NAMES) | {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert sent <= set(app.tasks), sorted(sent - set(app.tasks))
    assert {enqueue.DISPATCH, enqueue.EXECUTE_RUN, enqueue.FIRE_SCHEDULE, enqueue.TICK} == set(enqueue.TASK_NAMES)


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is installed by make install")
def test_lint_imports_fails_when_the_domain_imports_the_worker_layer(tmp_path: Path) -> None:
    for name in ("scheduler_site", "workers", "tasks_app", "executors"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")

    def lint() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})

    clean = lint()
    assert clean.returncode == 0, clean.stdout
    with (tmp_path / "tasks_app" / "selectors.py").open("a") as module:
        module.write("\nfrom workers.tasks import dispatch_task  # noqa\n")

    broken = lint()

    assert broken.returncode == 1
    assert "tasks_app.selectors -> workers.tasks" in broken.stdout
