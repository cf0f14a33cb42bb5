"""Worker processes as the end-to-end tests and the bench both run them: their environment (the stand-in CLIs)
and their stop (SIGTERM to the process group, SIGKILL after a grace period).

Plain Python, no Django, no pytest: bench/stack.py imports it too (tests never import bench).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

FAKES_BIN = Path(__file__).resolve().parent / "fakes" / "bin"


STAND_IN_ENV_ALLOW = ["FAKE_CLI_*"]


def stand_in_env(*, database_url: str, broker_url: str, var_dir: Path | str, work_dir: Path) -> dict[str, str]:
    """This process's environment for a product process whose CLIs are the stand-ins in tests/fakes/bin."""
    env = dict(os.environ)
    # A real database means real keys (settings refuse to start without): one pair per run, the same for every
    # process of it, unless the caller's environment has them (`make test` gives each run its own).
    # (The embedded default needs none: its processes share var/ and the key generated there.)
    if not database_url.startswith("sqlite"):
        run_key = hashlib.sha256(f"cli-scheduler-run:{var_dir}".encode()).hexdigest()
        env.setdefault("SECRET_KEY", f"run-{run_key}")
        env.setdefault("SCHEDULER_ENCRYPTION_KEY", f"run-credentials-{run_key}")
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
        # Inside the sandbox the stand-ins need their own code (read-only) and the test's folder for their logs
        # and state files (read-write): the folder that holds the work dirs, here.
        SCHEDULER_SANDBOX_RO_PATHS=str(FAKES_BIN.parent),
        SCHEDULER_SANDBOX_RW_PATHS=str(Path(work_dir).parent),
        # Product processes of a test or a bench speak plain HTTP on loopback (production's default is HTTPS-only).
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        # The stand-ins' own directives come through the group's env (FAKE_CLI_LOG, …): allowed for this site.
        SCHEDULER_ENV_ALLOW=",".join(STAND_IN_ENV_ALLOW),
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


def processes_with_env(name: str, value: str, *, program: str = "") -> list[int]:
    """Live processes (pids as this process sees them) whose environment holds `name=value` and, if given, that
    run `program` (a path part of the executable or, for scripts, of the script: the first two words of their
    command line). A stand-in CLI and everything it started carry the test's FAKE_CLI_LOG, whatever PID
    namespace they run in (inside the sandbox they only know their namespace's pids)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")[:2]
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in environ and state != b"Z" and any(program.encode() in word for word in argv):
            found.append(int(entry))
    return found


def cli_processes(log: Path | str) -> list[int]:
    """The stand-in CLI processes (and their forks) of the groups whose FAKE_CLI_LOG is `log`: not the
    supervisors and sandboxes around them."""
    return processes_with_env("FAKE_CLI_LOG", str(log), program="/fakes/bin/")
