"""The stack under test: a bench database, a broker namespace, worker processes, CPU accounting, cleanup.

Production (default): PostgreSQL and Redis on this machine. The bench creates its own database and drops
it at the end, and every Redis key it makes lives under a per-run prefix that it deletes by SCAN at the
end (never a flush). Embedded (``--embedded``): SQLite and the file-system broker in a temporary dir.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.procs import stand_in_env, stop_process_groups

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PG_URL_TEMPLATE = "postgres://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/0"
GROUP = "claude-bench"  # the worker group the parts measure: tool claude, account "bench", its own queue
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    embedded: bool
    var_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cli-scheduler-bench-")))
    token: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(4)}")
    workers: list[Worker] = field(default_factory=list)
    database_created: bool = False
    database_url_query: str = ""  # e.g. "conn_max_age=600" (django-environ options), for experiments

    @property
    def prefix(self) -> str:
        return f"bench-{self.token}:"

    @property
    def database_name(self) -> str:
        return f"cli_scheduler_bench_{self.token.replace('-', '_')}"

    @property
    def database_url(self) -> str:
        if self.embedded:
            url = f"sqlite:///{self.var_dir / 'db.sqlite3'}"
        else:
            url = PG_URL_TEMPLATE.format(name=self.database_name)
        return f"{url}?{self.database_url_query}" if self.database_url_query else url

    @property
    def broker_url(self) -> str:
        return "filesystem://" if self.embedded else REDIS_URL

    def env(self) -> dict[str, str]:
        """The environment of every process of the run, the bench's own included (as tests/conftest.py's)."""
        env = stand_in_env(database_url=self.database_url, broker_url=self.broker_url, var_dir=self.var_dir,
                           work_dir=self.var_dir / "work")
        env.update(SCHEDULER_BROKER_PREFIX="" if self.embedded else self.prefix, LOG_LEVEL="WARNING")
        return env

    def setup_django(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Django in this process against the run's database and broker; returns the environment it read."""
        import django

        env = {**self.env(), **(extra or {})}
        os.environ.update(env)  # before setup: settings read the environment once
        django.setup()
        return env

    # --- database -----------------------------------------------------------------------------------
    def create_database(self) -> None:
        if not self.embedded:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database_name}"')
            self.database_created = True
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=self.env(),
                       check=True)

    def drop_database(self) -> None:
        if self.embedded or not self.database_created:
            return
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')
        self.database_created = False

    # --- workers -------------------------------------------------------------------------------------
    def start_worker(self, app: str, queues: str, concurrency: int, name: str,
                     extra_env: dict[str, str] | None = None) -> Worker:
        argv = ["-A", app, "worker", "-Q", queues, "-c", str(concurrency), "-n", f"{name}-{self.token}@%h",
                "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        return self._spawn(name, argv, extra_env, ready="ready.", what=f"worker {name}")

    def start_beat(self, extra_env: dict[str, str] | None = None) -> Worker:
        """The product's beat (django-celery-beat's DatabaseScheduler), as tests/conftest.py starts it."""
        argv = ["-A", "workers", "beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "-s",
                str(self.var_dir / "beat-db"), "--loglevel", "INFO"]
        return self._spawn("beat", argv, extra_env, ready="beat: Starting...", what="beat")

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None, *, ready: str,
               what: str) -> Worker:
        """`celery <argv>` in its own session, logging to <name>.log, stopped with the others by `stop_workers`;
        returns once the log says `ready`."""
        log = self.var_dir / f"{name}.log"
        console_path = self.var_dir / f"{name}.out"
        with console_path.open("wb") as console:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", *argv, "-f", str(log)],
                cwd=ROOT, env={**self.env(), **(extra_env or {})}, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name=name, proc=proc, log=log)
        self.workers.append(worker)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not (log.exists() and ready in log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after 60 s; see {log}")
            time.sleep(0.05)
        if proc.poll() is not None:
            output = console_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{output}")
        return worker

    def stop_workers(self) -> None:
        """SIGTERM to every worker's (and the beat's) process group, SIGKILL after 15 s."""
        stop_process_groups(w.proc for w in self.workers)
        self.workers = []

    def start_pipeline(self, concurrency: int, *, max_concurrent: int | None = None, app: str = "workers",
                       group_env: dict[str, str] | None = None, extra_env: dict[str, str] | None = None) -> Worker:
        """The product side (Django set up): the group GROUP (cap `max_concurrent`, default `concurrency`; `group_env`
        for its CLI), a control worker (-c 1) and the group's worker (-c `concurrency`), which is returned."""
        from tasks_app.services.groups import group_create

        group_create(tool="claude", account="bench", max_concurrent=max_concurrent or concurrency, env=group_env)
        self.start_worker(app, "control", 1, "control", extra_env)
        return self.start_worker(app, GROUP, concurrency, GROUP, extra_env)

    def start_bare(self, concurrency: int, extra_env: dict[str, str] | None = None) -> Worker:
        """After the product side: its workers stopped and this process's connections closed, the baseline's
        worker (`celery -A bench.bare`, -c `concurrency`)."""
        from django.db import connections

        from bench import bare

        self.stop_workers()
        connections.close_all()
        return self.start_worker("bench.bare", bare.QUEUE, concurrency, "bare", extra_env)

    def worker_cpu_seconds(self) -> dict[str, float]:
        return {w.name: tree_cpu_seconds(w.proc.pid) for w in self.workers}

    # --- redis ---------------------------------------------------------------------------------------
    def delete_redis_keys_matching(self, pattern: str = "*") -> int:
        """Delete this run's keys `<prefix><pattern>` (SCAN MATCH; nothing outside the prefix)."""
        if self.embedded:
            return 0
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{self.prefix}{pattern}", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
        client.close()
        return deleted

    def report_failure(self, console: object, label: str, exc: BaseException) -> int:
        """Say why a bench part failed, with the tail of each worker's log; returns the exit code (1)."""
        console.print(f"[red]{label} failed:[/] {exc}")  # type: ignore[attr-defined]
        for worker in self.workers:
            if worker.log.exists():
                console.print(  # type: ignore[attr-defined]
                    f"--- {worker.log.name}\n{worker.log.read_text(errors='replace')[-3000:]}")
        return 1

    def close(self) -> None:
        """Everything this run made goes, whatever failed before."""
        self.stop_workers()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        self.drop_database()
        self.delete_redis_keys_matching()
        shutil.rmtree(self.var_dir, ignore_errors=True)


# --- CPU accounting ----------------------------------------------------------------------------------
def stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces; fields after it are space-separated.
    return raw[raw.rindex(")") + 2:].split()


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime over `root` and its live descendants.

    A child's CPU reaches its parent's cutime/cstime once the parent waits for it, so the short-lived
    CLI processes are counted through the pool process that ran them. Exact only between two points at
    which no child is running un-reaped (the bench samples when the queue is drained).
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is ppid (field 4 of stat)
        ticks[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / CLOCK_TICKS


def system_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all processes: database, broker, bench, anyone else)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
