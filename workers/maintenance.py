"""Housekeeping on worker boxes."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from django.conf import settings

from tasks_app.selectors import task_attempts_running

logger = logging.getLogger(__name__)

# A work dir, its private TMPDIR (.tmp) and git's scratch dir beside it (.git: executors.git.scratch_dir).
_RUN_DIR = re.compile(r"^(?P<task>[0-9a-f-]{36})-(?P<attempt>\d+)(?:\.tmp|\.git)?$")


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
    running = task_attempts_running(task_ids={task for task, _ in candidates.values()})
    removed = []
    for path, (task_id, attempt) in candidates.items():
        if (task_id, attempt) not in running:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        logger.info("removed %d stale work dir(s) under %s", len(removed), root)
    return removed


def prune_processed_messages(max_age_seconds: float = 600.0) -> int:
    """The embedded (file-system) broker keeps every processed message as a file: drop old ones."""
    folder = settings.EMBEDDED_BROKER_PROCESSED_DIR
    if not settings.CELERY_BROKER_URL.startswith("filesystem://") or not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_seconds
    removed = 0
    for entry in os.scandir(folder):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # another process pruned it first
    return removed
