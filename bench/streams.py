"""`python -m bench streams`: does a crowd of live followers slow the API or /healthz down? (issue 15)

The Procfile's `web` (gunicorn, WSGI) and `stream` (uvicorn, ASGI) processes, exactly as deployed, on a throwaway
PostgreSQL database seeded with --rows tasks (bench.seed) and --tasks running ones. A writer adds one line of
output to every running task --rate times a second (what working CLIs do), stamped with the time it was written.

Each repeat measures two windows, one after the other in the same run:
  * baseline: --clients API clients (GET /api/v1/tasks/, back to back, bench.api.load) and a /healthz probe
    (10 a second), no follower;
  * followers: the same, while --followers SSE clients (asyncio, one connection each, `Accept: text/event-stream`,
    10 per token) follow the running tasks; every line's delivery time (written -> read by a follower) is kept.
Reported: API and /healthz latency of both windows, the followers' delivery latency, the CPU of the web and stream
processes, and the database connections held while the followers are connected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from psycopg import DatabaseError

from bench.api import Run, Scenario, free_port, load
from bench.common import (
    Figure,
    add_output_arguments,
    begin,
    console,
    count,
    finish,
    part_parser,
)
from bench.docs import figures_section, percentile, spread
from bench.seed import TENANTS, create_groups, create_tokens, seed_tasks
from bench.stack import ROOT, tree_cpu_seconds
from tests.procs import stop_process_groups

LIST = Scenario("list first page", "GET", "/api/v1/tasks/")
FOLLOWERS_PER_TOKEN = 10
TARGET_RATIO = 1.25  # "unaffected": p95 with the followers within 25 % of the same run's baseline


# --- the processes, as the Procfile runs them -----------------------------------------------------------------
@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise RuntimeError(f"no {name!r} process in the Procfile")


def start_process(name: str, env: dict[str, str], var_dir: Path) -> Process:
    port = free_port()
    log = var_dir / f"{name}.log"
    binaries = Path(sys.executable).parent
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", f"exec {procfile_command(name)}"], cwd=ROOT,
                                env={**env, "PORT": str(port), "STREAM_PORT": str(port),
                                     "PATH": f"{binaries}{os.pathsep}{env.get('PATH', '')}"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return Process(name=name, proc=proc, port=port)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not answering after 60 s; see {log}")
        time.sleep(0.2)


# --- the output writer ------------------------------------------------------------------------------------------
class Writer(threading.Thread):
    """One chunk per running task every 1/rate s, in one INSERT, its data the wall time it was written."""

    def __init__(self, database_url: str, runs: list[int], rate: float) -> None:
        super().__init__(daemon=True)
        self.database_url, self.runs, self.rate = database_url, runs, rate
        self.stop_event = threading.Event()
        self.seq = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.stop_event.wait(1 / self.rate):
                stamp = f"{time.time():.6f}\n"
                conn.execute(
                    "INSERT INTO tasks_app_tasklogchunk (run_id, seq, stream, data, created_at) "
                    "SELECT run_id, %s, 'stdout', %s, now() FROM unnest(%s::bigint[]) AS run_id",
                    [self.seq, stamp, self.runs])
                self.seq += 1


# --- the followers ----------------------------------------------------------------------------------------------
@dataclass
class Followers:
    """`n` SSE clients on their own event loop (a thread), reading every event and timing the output lines."""

    port: int
    targets: list[tuple[str, str]]  # (task id, token) per follower
    after: int = 0  # the first line to follow: the writer's next, so no backlog is timed
    connected: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    delays_ms: list[float] = field(default_factory=list)
    record_from: float | None = None  # wall time: lines written from then on are timed
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    stopping: asyncio.Event | None = None

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            self.loop = asyncio.new_event_loop()
            self.stopping = asyncio.Event()
            ready.set()
            self.loop.run_until_complete(self._all())
            self.loop.close()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.wait()

    async def _all(self) -> None:
        tasks = [asyncio.create_task(self._one(task_id, key)) for task_id, key in self.targets]
        await self.stopping.wait()  # type: ignore[union-attr]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, task_id: str, key: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"GET /api/v1/tasks/{task_id}/logs/?follow=1&after={self.after} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1\r\nAuthorization: Token {key}\r\nAccept: text/event-stream\r\n\r\n".encode())
            status = (await reader.readline()).decode().split(" ", 2)[1]
            if status != "200":
                self.refused[status] = self.refused.get(status, 0) + 1
                return
            self.connected += 1
            kind = ""
            while line := await reader.readline():
                # Chunked transfer: size lines and payload lines both arrive here; only SSE fields matter.
                text = line.decode(errors="replace").rstrip("\r\n")
                if text.startswith("event: "):
                    kind = text[7:]
                elif text.startswith("data: ") and kind == "stdout" and self.record_from is not None:
                    with contextlib.suppress(ValueError):
                        written = float(text[6:])
                        if written >= self.record_from:
                            self.delays_ms.append(1000 * (time.time() - written))
        finally:
            writer.close()

    def stop(self) -> None:
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        if self.thread is not None:
            self.thread.join(timeout=30)


def followers_process(port: int, targets: list[tuple[str, str]], after: int, pipe: Connection) -> None:
    """The followers in a process of their own (`spawn`), so that their reading never waits for the GIL of the
    bench's API clients. Commands on `pipe`: "connected", "record", "collect", "stop"."""
    followers = Followers(port=port, targets=targets, after=after)
    followers.start()
    while True:
        command = pipe.recv()
        if command == "connected":
            pipe.send((followers.connected, dict(followers.refused)))
        elif command == "record":
            followers.delays_ms = []
            followers.record_from = time.time()
            pipe.send(None)
        elif command == "collect":
            followers.record_from = None
            pipe.send(followers.delays_ms)
        else:
            followers.stop()
            pipe.send(None)
            return


class FollowerCrowd:
    """The bench's handle on the followers' process."""

    def __init__(self, port: int, targets: list[tuple[str, str]], after: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=followers_process, args=(port, targets, after, child), daemon=True)
        self.process.start()
        self.size = len(targets)

    def ask(self, command: str) -> Any:
        self.pipe.send(command)
        if not self.pipe.poll(60):
            raise RuntimeError(f"the followers' process did not answer {command!r}")
        return self.pipe.recv()

    def wait_connected(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            connected, refused = self.ask("connected")
            if refused:
                raise RuntimeError(f"followers refused: {refused}")
            if connected >= self.size:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {connected} of {self.size} followers connected after 120 s")
            time.sleep(0.1)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, EOFError):
            self.ask("stop")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


# --- /healthz probe ---------------------------------------------------------------------------------------------
def probe_health(port: int, seconds: float, interval: float = 0.1) -> list[float]:
    """GET /healthz every `interval` s for `seconds`; the latency of each answer, whatever its status (ms)."""
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            latencies.append(1000 * (time.perf_counter() - began))
        except (OSError, http.client.HTTPException):
            latencies.append(30_000.0)
        finally:
            conn.close()
        time.sleep(max(0.0, interval - (time.perf_counter() - began)))
    return latencies


@dataclass
class Window:
    kind: str  # "baseline" or "followers"
    api: Run
    health_ms: list[float]
    web_cpu_percent: float
    stream_cpu_percent: float
    delays_ms: list[float]
    database_connections: int


def measure(kind: str, web: Process, stream: Process, keys: list[str], args: argparse.Namespace,
            followers: FollowerCrowd | None, database_url: str) -> Window:
    health: list[float] = []
    prober = threading.Thread(target=lambda: health.extend(probe_health(web.port, args.seconds)))
    cpu0 = web.cpu_seconds(), stream.cpu_seconds()
    began = time.perf_counter()
    if followers is not None:
        followers.ask("record")
    prober.start()
    api = load(web.port, LIST, keys, clients=args.clients, seconds=args.seconds)
    prober.join()
    elapsed = time.perf_counter() - began
    delays = followers.ask("collect") if followers is not None else []
    cpu1 = web.cpu_seconds(), stream.cpu_seconds()
    return Window(kind=kind, api=api, health_ms=health, web_cpu_percent=100 * (cpu1[0] - cpu0[0]) / elapsed,
                  stream_cpu_percent=100 * (cpu1[1] - cpu0[1]) / elapsed, delays_ms=delays,
                  database_connections=database_connections(database_url))


def database_connections(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()
    return int(row[0]) - 1  # not this one


# --- the run ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("streams", __doc__)
    parser.add_argument("--followers", type=count, default=200, help="SSE followers (default 200)")
    parser.add_argument("--clients", type=count, default=20, help="API client threads (default 20)")
    parser.add_argument("--tasks", type=count, default=20, help="running tasks the followers follow (default 20)")
    parser.add_argument("--rate", type=float, default=2.0, help="output lines per task per second (default 2)")
    parser.add_argument("--rows", type=int, default=100_000, help="tasks in the table (default 100,000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per window (default 10)")
    parser.add_argument("--repeat", type=count, default=3, help="baseline + followers pairs (default 3)")
    add_output_arguments(parser, summary=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    args, command, info, stack = begin("streams", argv, parse_args,
                                       sizes="{followers} followers of {tasks} tasks, {clients} API clients")
    processes: list[Process] = []
    writer: Writer | None = None
    followers: FollowerCrowd | None = None
    windows: list[Window] = []
    try:
        stack.create_database()
        env = stack.setup_django({"SCHEDULER_API_THROTTLE_RATE": "1000000/s"})
        groups = create_groups(max_concurrent=4)
        tenant_keys = list(create_tokens().values())
        runs, targets = _followed_tasks(args)
        from django.db import connections

        connections.close_all()
        database_url = stack.database_url.split("?")[0]
        seed_tasks(database_url, rows=args.rows, groups=groups, queued_only=False)
        web = start_process("web", env, stack.var_dir)
        stream = start_process("stream", env, stack.var_dir)
        processes = [web, stream]
        console.print(f"web (gunicorn) on :{web.port}, stream (uvicorn) on :{stream.port}")
        writer = Writer(database_url, runs, args.rate)
        writer.start()
        load(web.port, LIST, tenant_keys, clients=args.clients, seconds=1.0)  # warm-up, not counted
        for index in range(args.repeat):
            windows.append(measure("baseline", web, stream, tenant_keys, args, None, database_url))
            followers = FollowerCrowd(stream.port, targets, after=writer.seq)
            followers.wait_connected()
            windows.append(measure("followers", web, stream, tenant_keys, args, followers, database_url))
            followers.stop()
            followers = None
            for window in windows[-2:]:
                console.print(f"  {index + 1}/{args.repeat} {window.kind:9} API p95 {window.api.p(0.95):6.1f} ms "
                              f"({window.api.requests_per_second:5.0f} req/s), /healthz p95 "
                              f"{percentile(sorted(window.health_ms), 0.95):6.1f} ms, CPU web "
                              f"{window.web_cpu_percent:3.0f} % stream {window.stream_cpu_percent:3.0f} %, "
                              f"DB connections {window.database_connections}"
                              + (f", delivery p95 {percentile(sorted(window.delays_ms), 0.95):.0f} ms "
                                 f"({len(window.delays_ms)} lines)" if window.delays_ms else ""))
    except (RuntimeError, KeyboardInterrupt, subprocess.CalledProcessError, DatabaseError) as exc:
        return stack.report_failure(console, "bench streams", exc)
    finally:
        if followers is not None:
            followers.stop()
        if writer is not None:
            writer.stop_event.set()
            writer.join(timeout=10)
        stop_process_groups(p.proc for p in processes)
        stack.close()
    figures = summary(windows)
    return finish("streams", args, figures, {"command": command},
                  lambda load_end, _elapsed: report(args, info, command, load_end, windows, figures),
                  started=started)


def _followed_tasks(args: argparse.Namespace) -> tuple[list[int], list[tuple[str, str]]]:
    """--tasks running tasks of the first tenant, each with a running attempt; a token per 10 followers."""
    from tasks_app.models import Task, TaskRun, TaskStatus
    from tasks_app.services.accounts import token_create, user_create

    tenant = TENANTS[0][0]
    tasks = [Task.objects.create(tool="claude", prompt="bench: a long job, followed", tenant=tenant,
                                 status=TaskStatus.RUNNING, timeout_seconds=3600) for _ in range(args.tasks)]
    runs = [TaskRun.objects.create(task=task, attempt=1, lease_token=uuid.uuid4()).pk for task in tasks]
    keys = []
    for i in range(-(-args.followers // FOLLOWERS_PER_TOKEN)):
        user_create(username=f"bench-follower-{i}", tenant=tenant)
        keys.append(token_create(username=f"bench-follower-{i}")[1])
    targets = [(str(tasks[i % len(tasks)].pk), keys[i // FOLLOWERS_PER_TOKEN]) for i in range(args.followers)]
    return runs, targets


def _p(values: list[float], fraction: float) -> float:
    return percentile(sorted(values), fraction)


def summary(windows: list[Window]) -> list[Figure]:
    base = [w for w in windows if w.kind == "baseline"]
    crowd = [w for w in windows if w.kind == "followers"]
    figures = []
    for name, value in (("API p95 (ms)", lambda w: w.api.p(0.95)), ("/healthz p95 (ms)", lambda w: _p(w.health_ms,
                                                                                                        0.95))):
        before = statistics.median(value(w) for w in base)
        after = statistics.median(value(w) for w in crowd)
        figures.append(Figure(part="streams", name=f"{name} with the followers", value=f"{after:.1f}",
                              baseline=f"{before:.1f} without", target=f"<= {TARGET_RATIO:g} x baseline",
                              met=after <= TARGET_RATIO * before))
    return figures


def report(args: argparse.Namespace, info: dict[str, str], command: str, load_end: str, windows: list[Window],
           figures: list[Figure]) -> str:
    columns = ("window", "API p50 ms", "API p95 ms", "API p99 ms", "API req/s", "/healthz p50 ms",
               "/healthz p95 ms", "/healthz max ms", "CPU web %", "CPU stream %", "DB connections",
               "delivery p50 ms", "delivery p95 ms")
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    for kind in ("baseline", "followers"):
        mine = [w for w in windows if w.kind == kind]
        delays = [w for w in mine if w.delays_ms]
        cells = [
            "no followers" if kind == "baseline" else f"{args.followers} followers",
            spread([w.api.p(0.5) for w in mine]), spread([w.api.p(0.95) for w in mine]),
            spread([w.api.p(0.99) for w in mine]), spread([w.api.requests_per_second for w in mine], "{:.0f}"),
            spread([_p(w.health_ms, 0.5) for w in mine]), spread([_p(w.health_ms, 0.95) for w in mine]),
            spread([max(w.health_ms) for w in mine]), spread([w.web_cpu_percent for w in mine], "{:.0f}"),
            spread([w.stream_cpu_percent for w in mine], "{:.0f}"),
            spread([float(w.database_connections) for w in mine], "{:.0f}"),
            spread([_p(w.delays_ms, 0.5) for w in delays], "{:.0f}") if delays else "-",
            spread([_p(w.delays_ms, 0.95) for w in delays], "{:.0f}") if delays else "-",
        ]
        errors = sum(sum(w.api.errors.values()) for w in mine)
        if errors:
            cells[0] += f" ({errors} API errors)"
        lines.append(f"| {' | '.join(cells)} |")
    for line in lines:
        console.print(line)
    setup = (f"The Procfile's `web` (gunicorn gthread, 2 x 8 threads) and `stream` (uvicorn) on PostgreSQL with "
             f"{args.rows:,} tasks; {args.clients} API clients (GET /api/v1/tasks/, tenant tokens, back to back) "
             f"and a /healthz probe every 100 ms against `web`; {args.followers} SSE followers "
             f"({FOLLOWERS_PER_TOKEN} per token) of {args.tasks} running tasks against `stream`, each task "
             f"writing {args.rate:g} lines/s; {args.seconds:g} s windows, {args.repeat} baseline + followers pairs "
             "in the same run, figures median (min\N{EN DASH}max) over the pairs. Delivery: a line's write "
             "to a follower's read (includes up to one poll interval, 0.5 s). DB connections: the bench "
             "database's, at the end of the window, the bench's own excluded. Everything, bench clients "
             "included, on the same 2 cores.")
    return figures_section("Live streams: 200 followers beside the API (issue 15, generated "
                           f"{time.strftime('%Y-%m-%d')})", command, "(bench/streams.py)", info=info, load=load_end,
                           setup=setup, table=lines, figures=figures)
