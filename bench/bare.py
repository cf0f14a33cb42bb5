"""The baseline: a bare Celery task that runs the stand-in CLI and counts completions. No Django, no DB.

Its Celery configuration is the product's own, read from ``scheduler_site/settings.py`` as a plain module
(same broker URL and key prefix from the environment, prefetch 1, early ack, JSON, no results, task
events on), so the only difference from the pipeline is the scheduler itself. The settings file is
loaded by path so the worker never imports the product package (and its Celery app).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = "tests/fakes/bin/claude"
QUEUE = "bench-bare"


def product_settings() -> ModuleType:
    path = ROOT / "scheduler_site" / "settings.py"
    spec = importlib.util.spec_from_file_location("bench_product_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Not the current app: in the bench process the product's shared tasks must keep resolving to its app.
app = Celery("bench.bare", set_as_current=False)
app.config_from_object(product_settings(), namespace="CELERY")
app.conf.task_default_queue = QUEUE
app.conf.beat_schedule = {}


@cache
def _redis():  # redis is imported lazily: the embedded mode needs no Redis
    import redis

    return redis.Redis.from_url(app.conf.broker_url)


def record_completion(counter: str) -> None:
    """Redis broker: INCR a key under the run's prefix. File broker: append one byte to a file."""
    if app.conf.broker_url.startswith("redis"):
        _redis().incr(counter)
    else:
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)


def completions(counter: str) -> int:
    if app.conf.broker_url.startswith("redis"):
        return int(_redis().get(counter) or 0)
    try:
        return os.stat(counter).st_size
    except FileNotFoundError:
        return 0


@app.task(name="bench.bare.run_cli", ignore_result=True)
def run_cli(counter: str) -> None:
    done = subprocess.run(
        [FAKE_CLAUDE, "-p", "--output-format", "json"], input=b"noop", capture_output=True, timeout=60,
        start_new_session=True, cwd=ROOT, check=False,
    )
    if done.returncode != 0:  # not counted: the bench then times out instead of reporting a false rate
        raise RuntimeError(f"stand-in CLI exited {done.returncode}: {done.stderr[-500:]!r}")
    record_completion(counter)


# The issue-9 baselines: the same stand-in as a group's CLI, steered by the same prompt (its `FAKE:` line), with
# the same minimal environment plus FAKE_CLI_LOG, so its own start/end lines time it exactly as in the pipeline.
FAKE_ENV_NAMES = ("PATH", "HOME", "LANG")


@app.task(name="bench.bare.run_fake", ignore_result=True)
def run_fake(prompt: str, fake_log: str, counter: str = "") -> None:
    """What a plain Celery task would do: run the CLI, capture its output (`subprocess.run`), count it."""
    env = {name: os.environ[name] for name in FAKE_ENV_NAMES if name in os.environ}
    env["FAKE_CLI_LOG"] = fake_log
    done = subprocess.run(
        [str(ROOT / FAKE_CLAUDE), "-p", "--output-format", "json"], input=prompt.encode(), capture_output=True,
        timeout=600, start_new_session=True, cwd=ROOT, env=env, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"stand-in CLI exited {done.returncode}: {done.stderr[-500:]!r}")
    del done  # the captured output goes before the completion is counted, as a real task's result would
    if counter:
        record_completion(counter)
