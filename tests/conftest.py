"""Shared fixtures. End-to-end tests start real Celery worker processes on the configured broker and
database (the test database, committed through `transactional_db`); only the LLM CLIs are stand-ins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import override_settings

from tests.procs import FAKES_BIN, STAND_IN_ENV_ALLOW, stand_in_env, stop_process_groups

ROOT = Path(__file__).resolve().parent.parent

# Every credential value stored during the session, and every log our processes wrote: at the end of the run
# the logs are grepped for the values (SPEC: secrets never in logs). The stand-in CLIs' own logs are not ours.
CREDENTIAL_VALUES: set[str] = set()
OUR_LOG_FILES: list[Path] = []


@pytest.fixture(autouse=True, scope="session")
def _plain_http() -> Iterator[None]:
    """The test client and live_server speak plain HTTP. With DATABASE_URL set and DEBUG off the settings are
    production's, HTTPS-only: no redirect and no Secure-only cookies here (tests/test_settings.py tests those)."""
    with override_settings(SECURE_SSL_REDIRECT=False, SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False):
        yield


@pytest.fixture(autouse=True, scope="session")
def _record_credential_values() -> Iterator[None]:
    from tasks_app import crypto

    original = crypto.encrypt_json

    def recording(value: dict[str, str]) -> str:
        CREDENTIAL_VALUES.update(v for v in value.values() if isinstance(v, str) and len(v) >= 8)
        return original(value)

    crypto.encrypt_json = recording
    yield
    crypto.encrypt_json = original


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    files = [path for path in OUR_LOG_FILES if path.exists()]
    if not files:
        return
    hits = [(path, value) for path in files for value in CREDENTIAL_VALUES
            if value in path.read_text(errors="replace")]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"credential grep: {len(files)} worker/beat log files, {len(CREDENTIAL_VALUES)} "
                            f"credential values, {len(hits)} hits")
        for path, value in hits:
            reporter.write_line(f"  LEAK: {value[:4]}… found in {path}", red=True)
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def sandbox_paths(settings: Any, tmp_path: Path) -> None:
    """What a sandboxed stand-in needs in this process too (as stand_in_env gives the workers): its own code,
    read-only, and the test's folder (logs, state files), read-write."""
    settings.SCHEDULER_SANDBOX_RO_PATHS = [str(FAKES_BIN.parent)]
    settings.SCHEDULER_SANDBOX_RW_PATHS = [str(tmp_path)]
    settings.SCHEDULER_ENV_ALLOW = STAND_IN_ENV_ALLOW  # the stand-ins' FAKE_CLI_* directives, as stand_in_env


@pytest.fixture
def fake_bins(settings: Any) -> dict[str, str]:
    """Point the executors at the stand-in CLIs (in this process)."""
    bins = {tool: str(FAKES_BIN / tool) for tool in ("claude", "codex", "gemini")}
    for tool, path in bins.items():
        setattr(settings, f"SCHEDULER_{tool.upper()}_BIN", path)
    return bins


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Sets this process's local time zone (TZ + tzset) for clock times without a zone; restored afterwards."""
    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def test_database_url() -> str:
    info = connection.settings_dict
    if connection.vendor == "postgresql":
        auth = info["USER"] + (f":{info['PASSWORD']}" if info.get("PASSWORD") else "")
        return f"postgres://{auth}@{info['HOST'] or '127.0.0.1'}:{info['PORT'] or 5432}/{info['NAME']}"
    return f"sqlite:///{info['NAME']}"


class WorkerProcesses:
    """Real `celery -A workers worker` processes, stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = stand_in_env(database_url=test_database_url(), broker_url=settings.CELERY_BROKER_URL,
                           var_dir=settings.VAR_DIR, work_dir=self.log_dir / "work")
        env.update(extra or {})
        return env

    def start(self, queues: str, *, concurrency: int = 2, name: str | None = None,
              env: dict[str, str] | None = None, loglevel: str = "INFO") -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.procs)}-{queues.replace(',', '_')}"
        argv = ["worker", "-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]
        return self._spawn(name, argv, env, ready="ready.", loglevel=loglevel)

    def start_beat(self, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """The real beat (django-celery-beat's DatabaseScheduler) firing the tick every SCHEDULER_TICK_SECONDS."""
        argv = ["beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "-s", str(self.log_dir / "beat-db")]
        return self._spawn("beat", argv, env, ready="beat: Starting...", loglevel="INFO")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None, *, ready: str,
               loglevel: str) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        console = (self.log_dir / f"{name}.out").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", *argv, "--loglevel", loglevel, "-f", str(log)],
            cwd=ROOT, env=self.env(env), stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
        )
        console.close()
        self.procs.append((proc, log))
        OUR_LOG_FILES.extend([log, self.log_dir / f"{name}.out"])
        wait_until(lambda: (log.exists() and ready in log.read_text(errors="replace")) or proc.poll() is not None,
                   timeout=60, message=f"{name} to be ready")
        if proc.poll() is not None:
            output = (self.log_dir / f"{name}.out").read_text(errors="replace")
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{output[-3000:]}")
        return proc

    def stop(self) -> None:
        stop_process_groups(proc for proc, _ in self.procs)

    def logs(self, tail: int | None = 4000) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-(tail or 0):]}"
                         for _, log in self.procs if log.exists())


@pytest.fixture
def workers(transactional_db: None, tmp_path: Path) -> Iterator[WorkerProcesses]:
    if settings.CELERY_BROKER_URL.startswith("redis") and not os.environ.get("SCHEDULER_BROKER_PREFIX"):
        pytest.fail("set SCHEDULER_BROKER_PREFIX so tests never share queues on the machine's Redis")
    pool = WorkerProcesses(tmp_path)
    try:
        yield pool
    finally:
        pool.stop()


# --- the web tier as the Procfile runs it --------------------------------------------------------------------
def procfile_command(name: str) -> str:
    """The command of one process of the repository's Procfile (the real deployment's)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise AssertionError(f"no {name!r} process in the Procfile")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SiteProcesses:
    """The Procfile's `web` (gunicorn, WSGI) and `stream` (uvicorn, ASGI) processes on the test database, each on a
    free port, stopped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}

    def start(self, name: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        base_env = stand_in_env(database_url=test_database_url(), broker_url=settings.CELERY_BROKER_URL,
                                var_dir=settings.VAR_DIR, work_dir=self.log_dir / "work")
        base_env.update(PORT=str(port), STREAM_PORT=str(port), LOG_LEVEL="WARNING",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        base_env.update(env or {})
        log = self.log_dir / f"{name}.out"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {procfile_command(name)}"], cwd=ROOT, env=base_env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        OUR_LOG_FILES.append(log)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is not None or _answers(f"{url}/healthz"), timeout=60,
                   message=f"the {name} process to answer")
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        self.ports[name] = port
        return url

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.out").read_text(errors="replace")

    def stop(self) -> None:
        stop_process_groups(self.procs)


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # an HTTP answer, even an error: the server is up
    except OSError:
        return False
    return True


@pytest.fixture
def site(transactional_db: None, tmp_path: Path) -> Iterator[SiteProcesses]:
    processes = SiteProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()
