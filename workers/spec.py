"""Turn a RunContext (what the database says) into an ExecutionSpec (what the executor runs)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

from executors import ConfigurationError, ExecutionSpec, adapter_for
from executors.base import Sandbox, WorkspaceSpec
from executors.envpolicy import refused_reason
from executors.sandbox import state_dirs
from tasks_app.services.runs import RunContext

# From the worker's own environment only these reach the CLI: never DATABASE_URL, SECRET_KEY, the broker
# URL or another account's keys, which a worker box may well have in its environment.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def child_env(ctx: RunContext) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(adapter_for(ctx.tool).child_env)
    for name in (*ctx.group_env, *ctx.credentials):  # stored before the rule existed, or written around it
        reason = refused_reason(name)
        if reason:
            raise ConfigurationError(f"the group's {reason}; remove it from the group")
    env.update(ctx.group_env)
    env.update(ctx.credentials)  # credentials win on a clash (SPEC §2)
    return env


def run_sandbox(ctx: RunContext) -> Sandbox:
    """The sandbox for this run, from the settings and the group's state dirs (created when missing)."""
    if settings.SCHEDULER_SANDBOX == "off":
        return Sandbox(mode="off")
    try:
        group_state = state_dirs(ctx.group_env)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the group's state dir {exc.filename}: {exc.strerror}") from None
    return Sandbox(mode="bwrap", ro_paths=tuple(settings.SCHEDULER_SANDBOX_RO_PATHS),
                   rw_paths=tuple(settings.SCHEDULER_SANDBOX_RW_PATHS), state_dirs=group_state)


def execution_spec(ctx: RunContext) -> ExecutionSpec:
    if ctx.setup_error:
        raise ConfigurationError(ctx.setup_error)
    adapter = adapter_for(ctx.tool)
    binary = getattr(settings, f"SCHEDULER_{ctx.tool.upper()}_BIN")
    argv = adapter.build(
        binary=binary, model=ctx.model, extra_args=ctx.extra_args,
        allow_dangerous=ctx.allow_dangerous_flags and settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS,
        max_cost_usd=ctx.max_cost_usd, resume_session=ctx.resume_session,
    )
    work_dir = Path(settings.SCHEDULER_WORK_DIR) / f"{ctx.task_id}-{ctx.attempt}"
    return ExecutionSpec(
        tool=ctx.tool,
        argv=argv,
        stdin=ctx.prompt.encode(),
        env=child_env(ctx),
        work_dir=work_dir,
        input_files=ctx.input_files,
        output_patterns=ctx.output_patterns,
        timeout_seconds=float(ctx.timeout_seconds),
        kill_grace_seconds=settings.SCHEDULER_KILL_GRACE_SECONDS,
        stdout_limit=settings.SCHEDULER_STDOUT_LIMIT,
        max_output_bytes=settings.SCHEDULER_MAX_OUTPUT_BYTES,
        max_total_output_bytes=settings.SCHEDULER_MAX_TOTAL_BYTES,
        keep_work_dir=settings.SCHEDULER_KEEP_WORK_DIRS,
        heartbeat_interval=settings.SCHEDULER_CANCEL_POLL_SECONDS,
        secrets=tuple(v for v in (*ctx.credentials.values(), *ctx.repository_credentials.values()) if v),
        live_output_bytes=settings.SCHEDULER_LIVE_LOG_BYTES,
        sandbox=run_sandbox(ctx),
        model=ctx.model,
        idle_timeout_seconds=float(ctx.idle_timeout_seconds or 0),
        max_cost_usd=ctx.max_cost_usd,
        max_turns=ctx.max_turns,
        prices={str(name): (float(p[0]), float(p[1])) for name, p in settings.SCHEDULER_PRICES.items()},
        workspace=workspace_spec(ctx),
        # One path per conversation: claude and gemini file sessions by project directory, so a follow-up (or a
        # resumed attempt) finds its session only from the same path. Inside the sandbox only.
        work_dir_inside=f"{WORK_DIR_INSIDE}/{ctx.conversation_id or ctx.task_id}",
    )


WORK_DIR_INSIDE = "/workspace"  # not /work: a box may keep the product itself there


def workspace_spec(ctx: RunContext) -> WorkspaceSpec | None:
    if not ctx.repository_url:
        return None
    return WorkspaceSpec(
        url=ctx.repository_url, ref=ctx.ref, mirror_root=Path(settings.SCHEDULER_MIRROR_DIR),
        credentials=dict(ctx.repository_credentials), base_patches=ctx.base_patches,
        exclude=ctx.chained_dirs, push_branch=ctx.push_branch,
    )
