"""Housekeeping on worker boxes."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from django.conf import settings

from tasks_app.models import Task, TaskStatus

logger = logging.getLogger(__name__)

_RUN_DIR = re.compile(r"^(?P<task>[0-9a-f-]{36})-(?P<attempt>\d+)(?:\.tmp)?$")


def stale_work_dirs_remove(root: Path | None = None) -> list[str]:
    """Remove work dirs of attempts that are no longer running (left behind by a killed worker).

    Dirs of attempts still running (perhaps by another worker process on this box) are kept, and so is
    anything that is not a work dir of ours.
    """
    root = Path(root or settings.SCHEDULER_WORK_DIR)
    if settings.SCHEDULER_KEEP_WORK_DIRS or not root.is_dir():
        return []
    candidates = {}
    for entry in root.iterdir():
        match = _RUN_DIR.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            candidates[entry] = (match["task"], int(match["attempt"]))
    running = set(
        Task.objects.filter(pk__in={task for task, _ in candidates.values()}, status=TaskStatus.RUNNING)
        .values_list("pk", "attempt")
    )
    removed = []
    for path, (task_id, attempt) in candidates.items():
        if not any(str(pk) == task_id and n == attempt for pk, n in running):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        logger.info("removed %d stale work dir(s) under %s", len(removed), root)
    return removed
