"""Worker processes as the end-to-end tests and the bench both run them: their environment (the stand-in CLIs)
and their stop (SIGTERM to the process group, SIGKILL after a grace period).

Plain Python, no Django, no pytest: bench/stack.py imports it too (tests never import bench).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

FAKES_BIN = Path(__file__).resolve().parent / "fakes" / "bin"


def stand_in_env(*, database_url: str, broker_url: str, var_dir: Path | str, work_dir: Path) -> dict[str, str]:
    """This process's environment for a product process whose CLIs are the stand-ins in tests/fakes/bin."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="scheduler_site.settings",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        SCHEDULER_VAR_DIR=str(var_dir),
        SCHEDULER_WORK_DIR=str(work_dir),
        SCHEDULER_CLAUDE_BIN=str(FAKES_BIN / "claude"),
        SCHEDULER_CODEX_BIN=str(FAKES_BIN / "codex"),
        SCHEDULER_GEMINI_BIN=str(FAKES_BIN / "gemini"),
        SCHEDULER_KILL_GRACE_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    return env


def stop_process_groups(procs: Iterable[subprocess.Popen[bytes]], *, grace_seconds: float = 15.0) -> None:
    """SIGTERM to the process group of each (started with `start_new_session=True`), all at once so their warm
    shutdowns overlap; a group whose leader is still there after `grace_seconds` gets SIGKILL."""
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
