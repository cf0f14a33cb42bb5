"""The product's Celery app with measurement attached, for ``python -m bench --profile`` only.

``celery -A bench.instrumented worker`` runs the very same tasks as ``-A workers``; each pool process
additionally counts the SQL statements and DB time of every task (a Django execute wrapper), runs
cProfile, and writes both to ``$BENCH_PROFILE_DIR`` when it exits. cProfile slows Python code down, so a
profiled run's jobs/s are not benchmark figures; the counts are exact.
"""

from __future__ import annotations

import cProfile
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_process_init, worker_process_shutdown

from workers.celery import app

__all__ = ("app",)

_stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
_current: dict[str, Any] = {}
_profiler = cProfile.Profile()


def _query_wrapper(execute, sql, params, many, context):
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        name = _current.get("task", "(outside a task)")
        _stats[name]["queries"] += 1
        _stats[name]["db_seconds"] += time.perf_counter() - started
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        _stats[name][f"sql {verb}"] += 1


@worker_process_shutdown.connect
def _dump(**_: Any) -> None:
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if not folder:
        return
    _profiler.disable()
    pid = os.getpid()
    _profiler.dump_stats(Path(folder) / f"{pid}.prof")
    (Path(folder) / f"{pid}.json").write_text(json.dumps({k: dict(v) for k, v in _stats.items()}))


@worker_process_init.connect
def _start(**_: Any) -> None:
    from django.db import connection

    connection.execute_wrappers.append(_query_wrapper)
    _profiler.enable()


@task_prerun.connect
def _task_started(task: Any = None, **_: Any) -> None:
    _current["task"] = task.name
    _current["started"] = time.perf_counter()


@task_postrun.connect
def _task_ended(task: Any = None, **_: Any) -> None:
    stats = _stats[task.name]
    stats["calls"] += 1
    stats["seconds"] += time.perf_counter() - _current.pop("started", time.perf_counter())
    _current.pop("task", None)
    if os.environ.get("BENCH_PROFILE_DIR"):
        _dump_counts_only()


def _dump_counts_only() -> None:
    # Pool processes may be killed without running atexit: keep the counts on disk after every task.
    folder = os.environ["BENCH_PROFILE_DIR"]
    (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps({k: dict(v) for k, v in _stats.items()}))
