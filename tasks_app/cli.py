"""`schedulerctl`: the command line, working through the same services and selectors as the API.

Exit codes: 0 ok, 1 not found / not allowed now, 2 bad input, 3 `--wait` ended without success.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_WAIT_FAILED = 1, 2, 3


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other error here
        raise CommandError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="schedulerctl", description="Queue and inspect CLI Scheduler jobs.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--tenant", default=os.environ.get("SCHEDULER_TENANT", "default"))
    parser.add_argument("--actor", default=os.environ.get("USER", "cli"))
    # The global options are accepted after the subcommand too (`schedulerctl enqueue … --json`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--tenant", default=argparse.SUPPRESS)
    common.add_argument("--actor", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser = _with_parents(sub.add_parser, common)  # type: ignore[method-assign]

    p = sub.add_parser("enqueue", help="create a task")
    p.add_argument("tool")
    p.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    p.add_argument("--model", default="")
    p.add_argument("--priority", type=int, default=5)
    p.add_argument("--input", action="append", default=[], metavar="LOCAL[:REMOTE]")
    p.add_argument("--output", action="append", default=[], metavar="PATH")
    p.add_argument("--group")
    p.add_argument("--idempotency-key")
    p.add_argument("--at", help="not before: ISO 8601 time, or +30s / +10m / +2h")
    p.add_argument("--timeout", type=int, help="seconds")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--wait", action="store_true", help="wait until the task finishes")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after S seconds")

    p = sub.add_parser("list", help="list tasks")
    p.add_argument("--status")
    p.add_argument("--tool")
    p.add_argument("--group")
    p.add_argument("--limit", type=int, default=50)

    for name, text in (("get", "show a task"), ("cancel", "cancel a task"), ("retry", "re-queue a task"),
                       ("logs", "stdout/stderr of the latest run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="stream new output until the task ends")
    p.add_argument("--max-seconds", type=float, default=24 * 3600, help=argparse.SUPPRESS)
    p = sub.add_parser("files", help="a task's input and output files")
    p.add_argument("id")
    p.add_argument("--download", metavar="DIR")

    groups = sub.add_parser("groups", help="worker groups").add_subparsers(dest="action", required=True,
                                                                          parser_class=_Parser)
    groups.add_parser = _with_parents(groups.add_parser, common)  # type: ignore[method-assign]
    groups.add_parser("list")
    for name in ("add", "set"):
        p = groups.add_parser(name)
        if name == "add":
            p.add_argument("tool")
            p.add_argument("account")
            p.add_argument("--max-concurrent", type=int, default=1)
            p.add_argument("--disabled", action="store_true")
        else:
            p.add_argument("name")
            p.add_argument("--max-concurrent", type=int)
            p.add_argument("--unset-credential", action="append", default=[], metavar="KEY")
            p.add_argument("--clear-extra-args", action="store_true")
        p.add_argument("--credential", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--credential-from-env", action="append", default=[], metavar="KEY",
                       help="take KEY's value from this shell's environment (keeps it out of history)")
        p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--extra-arg", action="append", default=[], metavar="--FLAG[=VALUE]",
                       help="an allow-listed CLI flag; write it as --extra-arg=--max-turns=5")
        p.add_argument("--allow-dangerous-flags", action=argparse.BooleanOptionalAction, default=None)
    for name in ("pause", "resume"):
        groups.add_parser(name).add_argument("name")

    schedules = sub.add_parser("schedules", help="cron / interval / one-off schedules").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    schedules.add_parser = _with_parents(schedules.add_parser, common)  # type: ignore[method-assign]
    schedules.add_parser("list")
    p = schedules.add_parser("add", help="NAME TOOL PROMPT with exactly one of --cron, --every, --at")
    p.add_argument("name")
    p.add_argument("tool")
    p.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    timing = p.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help='5-field cron, e.g. "0 9 * * 1-5"')
    timing.add_argument("--every", type=int, metavar="SECONDS")
    timing.add_argument("--at", help="one-off: ISO 8601 time, or +30s / +10m / +2h")
    p.add_argument("--tz", default="UTC", help="IANA timezone of --cron (default UTC)")
    p.add_argument("--overlap", choices=["skip", "allow", "queue"], default="skip")
    p.add_argument("--group")
    p.add_argument("--model", default="")
    p.add_argument("--priority", type=int, default=5)
    p.add_argument("--output", action="append", default=[], metavar="PATH")
    p.add_argument("--timeout", type=int)
    p.add_argument("--paused", action="store_true", help="create it paused")
    for name in ("pause", "resume", "trigger", "rm", "get"):
        schedules.add_parser(name).add_argument("schedule", help="id or name")

    users = sub.add_parser("users", help="API users").add_subparsers(dest="action", required=True,
                                                                     parser_class=_Parser)
    users.add_parser = _with_parents(users.add_parser, common)  # type: ignore[method-assign]
    p = users.add_parser("add", help="create a user of --tenant (default: 'default')")
    p.add_argument("name")
    p.add_argument("--staff", action="store_true", help="sees every tenant, manages worker groups")

    tokens = sub.add_parser("tokens", help="API tokens").add_subparsers(dest="action", required=True,
                                                                        parser_class=_Parser)
    tokens.add_parser = _with_parents(tokens.add_parser, common)  # type: ignore[method-assign]
    p = tokens.add_parser("create", help="a new key for a user; printed once, stored only as a hash")
    p.add_argument("--user", required=True)
    p.add_argument("--name", default="")
    p = tokens.add_parser("list")
    p.add_argument("--user")
    tokens.add_parser("revoke").add_argument("id", type=int)

    p = sub.add_parser("ask", help="describe a job in plain words; shows the proposal, creates it on confirmation")
    p.add_argument("sentence")
    p.add_argument("--timezone", help="your IANA timezone, for relative times (default: $TZ, else UTC)")
    p.add_argument("--yes", action="store_true", help="create without asking")
    return parser


def _with_parents(add_parser: Any, common: argparse.ArgumentParser) -> Any:
    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kwargs)

    return add


# --- helpers ----------------------------------------------------------------------------------------
def _pairs(items: list[str], *, option: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"{option} {item.split('=')[0]!r}: expected KEY=VALUE")
        result[key] = value
    return result


def _from_env(keys: list[str]) -> dict[str, str]:
    missing = [k for k in keys if k not in os.environ]
    if missing:
        raise CommandError(f"--credential-from-env: {missing[0]} is not set in this environment")
    return {k: os.environ[k] for k in keys}


_RELATIVE = re.compile(r"^\+(\d+)([smhd])$")


def parse_time(text: str) -> datetime:
    if match := _RELATIVE.match(text.strip()):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return datetime.now(UTC) + timedelta(**{unit: int(match.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"--at {text!r}: expected an ISO 8601 time (2026-12-01T09:00:00Z) or +30s/+10m/+2h"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _validation_message(exc: Any) -> str:
    parts = []
    for name, messages in exc.message_dict.items():
        label = "" if name == "__all__" else f"{name}: "
        parts.append(label + "; ".join(messages))
    return "; ".join(parts)


def _print(args: argparse.Namespace, data: Any, render: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=None, default=str))
    else:
        render(data)


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, no_wrap=column in ("id", "name", "status"))
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: do not squeeze into 80 columns
    console.print(table)


def _short(task_id: str) -> str:
    return task_id[:8]


def _find_task(args: argparse.Namespace) -> Any:
    from tasks_app.selectors import task_get

    task = task_get(task_id=args.id, tenant=args.tenant)
    if task is None:
        raise CommandError(f"no task {args.id!r} (give the full id or a unique prefix of 6+ characters)",
                           EXIT_NOT_FOUND)
    return task


# --- commands ---------------------------------------------------------------------------------------
def cmd_enqueue(args: argparse.Namespace) -> int:
    from django.conf import settings

    from tasks_app.models import TERMINAL_STATUSES, EventSource, TaskStatus
    from tasks_app.presenters import task_dict
    from tasks_app.services.tasks import InputFile, TaskSpec, task_create

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    inputs = []
    for item in args.input:
        local, sep, remote = item.partition(":")
        path = Path(local)
        if not path.is_file():
            raise CommandError(f"--input {local!r}: no such file")
        if path.stat().st_size > settings.SCHEDULER_MAX_INPUT_BYTES:
            raise CommandError(f"--input {local!r}: larger than SCHEDULER_MAX_INPUT_BYTES "
                               f"({settings.SCHEDULER_MAX_INPUT_BYTES} bytes)")
        inputs.append(InputFile(path=remote if sep else path.name, content=path.read_bytes()))
    spec = TaskSpec(
        tool=args.tool, prompt=prompt, model=args.model, input_files=inputs, output_files=args.output,
        priority=args.priority, scheduled_at=parse_time(args.at) if args.at else None,
        max_attempts=args.max_attempts, timeout_seconds=args.timeout, idempotency_key=args.idempotency_key,
        worker_group=args.group,
    )
    task, created = task_create(spec=spec, tenant=args.tenant, created_by=args.actor, source=EventSource.CLI)
    if args.wait:
        deadline = time.monotonic() + args.wait_timeout if args.wait_timeout else None
        while task.status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(f"task {task.pk} is still {task.status} after {args.wait_timeout:g}s",
                                   EXIT_WAIT_FAILED)
            time.sleep(0.5)
            task.refresh_from_db()
    data = task_dict(task, detail=args.wait)
    _print(args, data, lambda d: print(
        f"{'created' if created else 'existing'} task {d['id']} ({d['tool']}, priority {d['priority']}): {d['status']}"
        + (f"\n{(d.get('result') or {}).get('final_message') or d['error_message']}" if args.wait else "")
    ))
    return 0 if not args.wait or task.status == TaskStatus.SUCCEEDED else EXIT_WAIT_FAILED


def cmd_list(args: argparse.Namespace) -> int:
    from tasks_app.presenters import task_dict
    from tasks_app.selectors import task_list

    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    tasks = task_list(tenant=args.tenant, status=args.status, tool=args.tool, worker_group=args.group)[: args.limit]
    data = [task_dict(t) for t in tasks]
    _print(args, data, lambda rows: _table(
        ["id", "tool", "status", "prio", "group", "attempt", "created"],
        [[_short(r["id"]), r["tool"], r["status"], r["priority"], r["worker_group"], r["attempt"],
          r["created_at"][:19]] for r in rows],
    ))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from tasks_app.presenters import task_dict

    data = task_dict(_find_task(args), detail=True)

    def render(d: dict[str, Any]) -> None:
        for key in ("id", "tool", "model", "status", "priority", "worker_group", "attempt", "max_attempts",
                    "created_at", "started_at", "finished_at", "error_message"):
            if d.get(key) not in (None, ""):
                print(f"{key:>14}: {d[key]}")
        if d["result"]:
            print(f"{'final message':>14}: {d['result'].get('final_message')}")
        _table(["attempt", "status", "group", "exit", "failure", "tokens in/out", "ms"],
               [[r["attempt"], r["status"], r["worker_group"], r["exit_code"], r["failure_kind"],
                 f"{r['input_tokens']}/{r['output_tokens']}", r["latency_ms"]] for r in d["runs"]], title="runs")
        _table(["from", "to", "source", "actor", "reason", "at"],
               [[e["from_status"], e["to_status"], e["source"], e["actor"], e["reason"], e["created_at"][:23]]
                for e in d["events"]], title="events")

    _print(args, data, render)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from tasks_app.models import EventSource
    from tasks_app.presenters import task_dict
    from tasks_app.services.tasks import task_cancel

    task = task_cancel(task_id=_find_task(args).pk, source=EventSource.CLI, actor=args.actor)
    data = task_dict(task)
    _print(args, data, lambda d: print(
        f"task {d['id']} {'canceled' if d['status'] == 'canceled' else 'is being canceled (running)'}"))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from tasks_app.models import EventSource
    from tasks_app.presenters import task_dict
    from tasks_app.services.tasks import task_retry

    task = task_retry(task_id=_find_task(args).pk, source=EventSource.CLI, actor=args.actor)
    _print(args, task_dict(task), lambda d: print(f"task {d['id']} re-queued"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from tasks_app import logstream
    from tasks_app.presenters import run_dict

    task = _find_task(args)
    if args.follow:
        for event in logstream.follow(task.pk, max_seconds=args.max_seconds):
            if args.json:
                print(json.dumps({"event": event.kind, "data": event.data, "seq": event.seq}), flush=True)
            elif event.kind in ("stdout", "stderr"):
                stream = sys.stdout if event.kind == "stdout" else sys.stderr
                stream.write(event.data)
                stream.flush()
            elif event.kind == "attempt":
                print(f"--- attempt {event.data} ---", file=sys.stderr, flush=True)
            else:
                print(f"--- task {event.data}{' (stopped following)' if event.kind == 'timeout' else ''} ---",
                      file=sys.stderr, flush=True)
        return 0
    run = task.runs.order_by("-attempt").first()
    if run is None:
        raise CommandError(f"task {args.id} has not run yet", EXIT_NOT_FOUND)
    data = run_dict(run, with_output=True)
    if run.finished_at is None:  # still running: what it has printed so far
        chunks = logstream.chunks_after(run.pk, 0, limit=100_000)
        data["stdout"] = "".join(c.data for c in chunks if c.stream == "stdout")
        data["stderr"] = "".join(c.data for c in chunks if c.stream == "stderr")

    def render(d: dict[str, Any]) -> None:
        sys.stdout.write(d["stdout"])
        sys.stderr.write(d["stderr"])

    _print(args, data, render)
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    from tasks_app.presenters import file_dict
    from tasks_app.validation import relative_path

    task = _find_task(args)
    files = list(task.files.select_related("run").order_by("direction", "path", "-created_at"))
    data = [file_dict(f) for f in files]
    if args.download:
        target = Path(args.download)
        for item in files:
            if item.direction != "output":
                continue
            relative = relative_path(item.path, field="path")  # stored paths were validated; check again
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(item.read_bytes())
    _print(args, data, lambda rows: _table(
        ["id", "direction", "path", "bytes", "sha256", "attempt"],
        [[r["id"], r["direction"], r["path"], r["size_bytes"], r["sha256"][:16], r["attempt"]] for r in rows],
    ))
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    from tasks_app.presenters import group_dict
    from tasks_app.selectors import group_list
    from tasks_app.services import groups as svc

    if args.action == "list":
        data = [group_dict(g) for g in group_list()]
        _print(args, data, lambda rows: _table(
            ["name", "tool", "enabled", "running", "queued", "cap", "rate-limited until", "credentials"],
            [[r["name"], r["tool"], r["enabled"], r["running"], r["queued"], r["max_concurrent"],
              r["rate_limited_until"], ", ".join(r["credentials"])] for r in rows],
        ))
        return 0
    if args.action in ("pause", "resume"):
        group = (svc.group_pause if args.action == "pause" else svc.group_resume)(name=args.name)
    else:
        credentials = {**_pairs(args.credential, option="--credential"), **_from_env(args.credential_from_env)}
        env = _pairs(args.env, option="--env")
        if args.action == "add":
            group = svc.group_create(
                tool=args.tool, account=args.account, max_concurrent=args.max_concurrent,
                enabled=not args.disabled, credentials=credentials, env=env,
                allow_dangerous_flags=bool(args.allow_dangerous_flags), extra_args=args.extra_arg,
            )
        else:
            from tasks_app.models import WorkerGroup

            current = WorkerGroup.objects.filter(name=args.name).first()
            changes: dict[str, Any] = {"credentials_set": credentials, "credentials_unset": args.unset_credential}
            if args.max_concurrent is not None:
                changes["max_concurrent"] = args.max_concurrent
            if env and current is not None:
                changes["env"] = {**current.env, **env}
            if args.extra_arg or args.clear_extra_args:
                changes["extra_args"] = ([] if args.clear_extra_args or current is None
                                         else list(current.extra_args)) + args.extra_arg
            if args.allow_dangerous_flags is not None:
                changes["allow_dangerous_flags"] = args.allow_dangerous_flags
            group = svc.group_update(name=args.name, changes=changes)
    _print(args, group_dict(group), lambda d: print(
        f"group {d['name']}: {'enabled' if d['enabled'] else 'paused'}, cap {d['max_concurrent']}, "
        f"credentials: {', '.join(d['credentials']) or 'none'}"))
    return 0


def _schedule_dict(schedule: Any) -> dict[str, Any]:
    from tasks_app.api.serializers import ScheduleSerializer

    return dict(ScheduleSerializer(schedule).data)


def _timing_text(d: dict[str, Any]) -> str:
    if d["cron"]:
        return f"cron {d['cron']} ({d['timezone']})"
    return f"every {d['interval_seconds']} s" if d["interval_seconds"] else f"once at {d['run_at']}"


def _find_schedule(args: argparse.Namespace) -> Any:
    from tasks_app.models import Schedule

    rows = Schedule.objects.filter(tenant=args.tenant)
    ref = args.schedule
    schedule = (rows.filter(pk=int(ref)).first() if ref.isdigit() else None) or rows.filter(name=ref).first()
    if schedule is None:
        raise CommandError(f"no schedule {ref!r} in tenant {args.tenant!r}", EXIT_NOT_FOUND)
    return schedule


def cmd_schedules(args: argparse.Namespace) -> int:
    from tasks_app.models import Schedule
    from tasks_app.services import schedules as svc

    if args.action == "list":
        data = [_schedule_dict(s) for s in Schedule.objects.filter(tenant=args.tenant).order_by("name")]
        _print(args, data, lambda rows: _table(
            ["id", "name", "tool", "timing", "enabled", "overlap", "next run (local)", "last fired"],
            [[r["id"], r["name"], r["tool"], _timing_text(r), r["enabled"], r["overlap_policy"],
              (r["next_run_at_local"] or "")[:19], (r["last_fired_at"] or "")[:19]] for r in rows]))
        return 0
    if args.action == "add":
        spec = svc.ScheduleSpec(
            name=args.name, tool=args.tool, prompt=sys.stdin.read() if args.prompt == "-" else args.prompt,
            cron=args.cron or "", timezone=args.tz, interval_seconds=args.every,
            run_at=parse_time(args.at) if args.at else None, overlap_policy=args.overlap, enabled=not args.paused,
            model=args.model, output_files=args.output, priority=args.priority, timeout_seconds=args.timeout,
            worker_group=args.group,
        )
        schedule = svc.schedule_create(spec=spec, tenant=args.tenant, created_by=args.actor)
        _print(args, _schedule_dict(schedule), lambda d: print(
            f"schedule {d['id']} {d['name']!r}: {_timing_text(d)}, next run {d['next_run_at_local']}"))
        return 0
    schedule = _find_schedule(args)
    if args.action == "get":
        _print(args, _schedule_dict(schedule), lambda d: print(json.dumps(d, indent=2, default=str)))
    elif args.action in ("pause", "resume"):
        schedule = svc.schedule_set_enabled(schedule_id=schedule.pk, enabled=args.action == "resume")
        _print(args, _schedule_dict(schedule), lambda d: print(
            f"schedule {d['id']} {'resumed' if d['enabled'] else 'paused'}; next run {d['next_run_at_local']}"))
    elif args.action == "trigger":
        from tasks_app.presenters import task_dict

        firing = svc.schedule_fire(schedule_id=schedule.pk, source="trigger", actor=args.actor)
        if firing is None or firing.task is None:
            raise CommandError("this instant was already fired; try again", EXIT_NOT_FOUND)
        _print(args, task_dict(firing.task), lambda d: print(f"fired: task {d['id']}"))
    else:
        svc.schedule_delete(schedule_id=schedule.pk)
        _print(args, {"id": schedule.pk, "deleted": True}, lambda d: print(f"schedule {d['id']} deleted"))
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from tasks_app.services.accounts import user_create

    user = user_create(username=args.name, tenant=args.tenant, staff=args.staff)
    data = {"username": user.get_username(), "tenant": args.tenant, "staff": user.is_staff}
    _print(args, data, lambda d: print(f"user {d['username']} (tenant {d['tenant']}{', staff' if d['staff'] else ''})"))
    return 0


def _token_dict(token: Any) -> dict[str, Any]:
    return {"id": token.pk, "user": token.user.get_username(), "name": token.name, "prefix": token.prefix,
            "created_at": token.created_at.isoformat(),
            "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
            "revoked": token.revoked_at is not None}


def cmd_tokens(args: argparse.Namespace) -> int:
    from tasks_app.models import ApiToken
    from tasks_app.services.accounts import token_create, token_revoke

    if args.action == "create":
        token, key = token_create(username=args.user, name=args.name)
        data = {**_token_dict(token), "key": key}
        _print(args, data, lambda d: print(f"{d['key']}\n(token {d['id']} for {d['user']}: shown once, store it now)"))
    elif args.action == "list":
        rows = ApiToken.objects.select_related("user")
        if args.user:
            rows = rows.filter(user__username=args.user)
        data_rows = [_token_dict(t) for t in rows]
        _print(args, data_rows, lambda rows: _table(
            ["id", "user", "name", "prefix", "created", "last used", "revoked"],
            [[r["id"], r["user"], r["name"], r["prefix"] + "…", r["created_at"][:19], (r["last_used_at"] or "")[:19],
              r["revoked"]] for r in rows]))
    else:
        if not ApiToken.objects.filter(pk=args.id).exists():
            raise CommandError(f"no token {args.id}", EXIT_NOT_FOUND)
        token = token_revoke(token_id=args.id)
        _print(args, _token_dict(token), lambda d: print(f"token {d['id']} revoked"))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from tasks_app.presenters import task_dict
    from tasks_app.services.intake import IntakeError, intake_confirm, intake_propose

    zone = args.timezone or os.environ.get("TZ", "").lstrip(":") or "UTC"
    try:
        result = intake_propose(text=args.sentence, zone_name=zone)
    except IntakeError as exc:
        raise CommandError(str(exc), EXIT_NOT_FOUND) from None
    proposal = result.proposal.as_dict()
    if not args.json:
        _table(["field", "value"], [[key, ", ".join(value) if isinstance(value, list) else value]
                                    for key, value in proposal.items() if value not in (None, "", [])],
               title="proposal")
    create = proposal["kind"] != "none" and args.yes
    if proposal["kind"] != "none" and not args.yes:
        if sys.stdin.isatty():
            print(f"Create this {proposal['kind']}? [y/N] ", end="", file=sys.stderr, flush=True)
            create = sys.stdin.readline().strip().lower() in ("y", "yes")
        else:
            print("not created: stdin is not a terminal; run again with --yes to create it", file=sys.stderr)
    created = intake_confirm(result=result, tenant=args.tenant, created_by=args.actor) if create else None
    data: dict[str, Any] = {
        "proposal": proposal, "created": created is not None,
        "task": task_dict(created, detail=True) if result.proposal.kind == "task" and created else None,
        "schedule": _schedule_dict(created) if result.proposal.kind == "schedule" and created else None,
    }
    if args.json:
        print(json.dumps(data, default=str))
    elif data["task"]:
        print(f"created task {data['task']['id']} ({data['task']['tool']}): {data['task']['status']}")
    elif data["schedule"]:
        d = data["schedule"]
        print(f"created schedule {d['id']} {d['name']!r}: {_timing_text(d)}, next run {d['next_run_at_local']}")
    elif proposal["kind"] == "none":
        print(f"nothing to run: {proposal['reason']}")
    return 0


COMMANDS = {
    "enqueue": cmd_enqueue, "list": cmd_list, "get": cmd_get, "cancel": cmd_cancel, "retry": cmd_retry,
    "logs": cmd_logs, "files": cmd_files, "groups": cmd_groups, "users": cmd_users, "tokens": cmd_tokens,
    "schedules": cmd_schedules, "ask": cmd_ask,
}


def run(argv: list[str]) -> int:
    """Parse and run; every failure becomes one line on stderr and a non-zero exit code."""
    from django.core.exceptions import ValidationError

    from tasks_app.services.tasks import IdempotencyConflict, TaskStateError
    from tasks_app.transitions import InvalidTransition

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CommandError as exc:
        code, message = exc.code, str(exc)
    except ValidationError as exc:
        code, message = EXIT_USAGE, _validation_message(exc)
    except (TaskStateError, InvalidTransition, IdempotencyConflict) as exc:
        code, message = EXIT_NOT_FOUND, str(exc)
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    print(f"schedulerctl: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`schedulerctl …`)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")
    import django

    django.setup()
    sys.exit(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
