"""Helpers shared by the issue-9 benches (latency, footprint, fairness, all).

* `tagged_prompt`: a prompt whose `FAKE: {json}` line steers the stand-in CLI and carries a tag, so a line of
  the stand-in's own log (`FAKE_CLI_LOG`, JSONL, `"t": time.time()` at start and at end) names its job.
* `FakeLog`: reads that log incrementally (start/end time per tag).
* `worker_rss_bytes`: VmRSS of a Celery worker's main process plus its pool children (not the CLIs).
* `Figure`: one line of the summary table, written as JSON by each part and read back by `bench all`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.docs import percentile


def tagged_prompt(tag: str, **directive: object) -> str:
    return f"bench job {tag}\nFAKE: {json.dumps({'tag': tag, **directive})}"


@dataclass
class FakeLog:
    """The stand-in's JSONL log, read from where the last read stopped (lines are single O_APPEND writes)."""

    path: Path
    offset: int = 0
    pending: bytes = b""

    def __post_init__(self) -> None:
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.start_pids: dict[str, int] = {}

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()  # an unfinished line (none in practice) waits for the next read
        for raw in lines:
            if not raw.strip():
                continue
            line = json.loads(raw)
            tag = line.get("tag")
            if tag is None:
                continue
            if line["event"] == "start":
                self.starts[tag] = line["t"]
                self.start_pids[tag] = line["pid"]
            elif line["event"] == "end":
                self.ends[tag] = line["t"]

    def started(self, tags: list[str]) -> bool:
        self.refresh()
        return all(tag in self.starts for tag in tags)

    def ended(self, tags: list[str]) -> bool:
        self.refresh()
        return all(tag in self.ends for tag in tags)


def wait_for(done: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- memory ----------------------------------------------------------------------------------------------
def vm_rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """Direct children, by the ppid field of every /proc/<pid>/stat (no /proc/…/children on this kernel)."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:  # the name may hold spaces; ppid follows state
            found.append(int(entry.name))
    return found


def worker_rss_bytes(pid: int) -> tuple[int, int]:
    """(main process RSS + its pool children's RSS, number of pool children). CLI grandchildren are left out."""
    children = children_of(pid)
    return vm_rss_bytes(pid) + sum(vm_rss_bytes(c) for c in children), len(children)


# --- figures -----------------------------------------------------------------------------------------------
@dataclass
class Figure:
    part: str
    name: str
    value: str
    baseline: str
    target: str
    met: bool | None  # None: no target

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "NOT met")


def write_figures(path: Path | None, figures: list[Figure], meta: dict[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps({"meta": meta, "figures": [asdict(f) for f in figures]}, indent=2))


def read_figures(path: Path) -> tuple[list[Figure], dict[str, object]]:
    data = json.loads(path.read_text())
    return [Figure(**f) for f in data["figures"]], data["meta"]


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(1000 * s for s in seconds)
    return {"p50": percentile(ordered, 0.5), "p95": percentile(ordered, 0.95), "p99": percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else float("nan")}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- the machine -------------------------------------------------------------------------------------------
def machine_details() -> dict[str, str]:
    """nproc, memory, CPU model, load and the versions of everything in the path of a job."""
    import celery
    import django

    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    details = {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "CPU": cpu,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "Celery": celery.__version__,
    }
    try:
        import psycopg

        from bench.stack import PG_ADMIN_URL

        with psycopg.connect(PG_ADMIN_URL) as conn:
            details["PostgreSQL"] = str(conn.execute("SHOW server_version").fetchone()[0])
    except Exception as exc:  # reported, not fatal: the parts will fail on their own if it is really down
        details["PostgreSQL"] = f"unknown ({type(exc).__name__})"
    try:
        import redis

        from bench.stack import REDIS_URL

        client = redis.Redis.from_url(REDIS_URL)
        details["Redis"] = str(client.info("server")["redis_version"])
        client.close()
    except Exception as exc:
        details["Redis"] = f"unknown ({type(exc).__name__})"
    return details


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def git_revision() -> str:
    from bench.stack import ROOT

    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
