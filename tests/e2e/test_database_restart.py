"""A PostgreSQL restart while two runs are in flight loses neither (issue 14). The test starts its own throwaway
cluster (initdb + pg_ctl, as the postgres user since initdb refuses root) on a free port, and never touches the
machine's server. Everything of the product here — schedulerctl, the workers — talks to that cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import ROOT, WorkerProcesses, wait_until
from tests.e2e.test_faults import FAST, _free_port
from tests.e2e.test_pipeline import fake, read_log

PG_BIN = sorted(glob("/usr/lib/postgresql/*/bin"))[-1:] or [""]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(f"{PG_BIN[0]}/initdb") or os.geteuid() != 0 or shutil.which("su") is None,
                       reason="needs PostgreSQL's initdb/pg_ctl and root (to run them as the postgres user)"),
    pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="the Redis broker run"),
]


class Cluster:
    """A throwaway PostgreSQL cluster in `folder`, owned by the postgres user, on `port`."""

    def __init__(self, port: int) -> None:
        # Not under pytest's tmp_path: its parents are root's alone, and the cluster runs as postgres.
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="scheduler-test-pg-")), port
        self.data, self.log = self.folder / "data", self.folder / "postgres.log"
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(f"{PG_BIN[0]}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, *argv: str) -> None:
        command = " ".join(f"'{word}'" for word in argv)
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        self._as_postgres(f"{PG_BIN[0]}/pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                          f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(f"{PG_BIN[0]}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()  # already stopped, when the test got that far
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/scheduler"


def _ctl(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "schedulerctl"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=check)


def test_a_postgresql_restart_during_two_runs_loses_neither(workers: WorkerProcesses, tmp_path: Path) -> None:
    cluster = Cluster(_free_port())
    cluster.start()
    try:
        log = tmp_path / "cli.log"
        env = {**FAST, "SCHEDULER_LEASE_SECONDS": "20", "DATABASE_URL": cluster.url}
        product = workers.env(env)
        subprocess.run([sys.executable, "-c", "import psycopg; psycopg.connect("
                        f"'postgres://postgres@127.0.0.1:{cluster.port}/postgres', autocommit=True)"
                        ".execute('CREATE DATABASE scheduler')"], check=True, timeout=60)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=product, check=True,
                       timeout=300)
        _ctl(product, "groups", "add", "claude", "main", "--max-concurrent", "2", "--env", f"FAKE_CLI_LOG={log}")
        workers.start_beat(env=env)
        workers.start("control", concurrency=1, env=env)
        workers.start("claude-main", concurrency=2, env=env)
        jobs = [fake(f"job {i}", sleep=2, tag=f"job-{i}", write={"out.txt": "done"}) for i in range(2)]
        ids = [json.loads(_ctl(product, "--json", "enqueue", "claude", job, "--output", "out.txt").stdout)["id"]
               for job in jobs]
        wait_until(lambda: log.exists() and len([e for e in read_log(log) if e["event"] == "start"]) == 2,
                   timeout=60, message="both CLIs to start")

        # Both runs are in flight, and end while the database is gone: their heartbeats and their results meet
        # no database for a few seconds.
        cluster.stop()
        time.sleep(4)
        cluster.start()

        def finished() -> list[dict] | None:
            got = [_ctl(product, "--json", "get", task_id, check=False) for task_id in ids]
            if any(g.returncode for g in got):
                return None
            tasks = [json.loads(g.stdout) for g in got]
            return tasks if all(t["status"] in ("succeeded", "failed", "canceled") for t in tasks) else None

        tasks = wait_until(finished, timeout=90, interval=0.5, message="both tasks to finish")
    finally:
        cluster.remove()

    assert [t["status"] for t in tasks] == ["succeeded", "succeeded"], workers.logs()
    assert [[(r["attempt"], r["status"]) for r in t["runs"]] for t in tasks] == [[(1, "succeeded")]] * 2, (
        [t["runs"] for t in tasks], workers.logs())
    assert sorted(e["tag"] for e in read_log(log) if e["event"] == "start") == ["job-0", "job-1"]  # no re-run
