"""`schedulerctl schedules list | add | get | pause | resume | trigger | rm`: cron, interval and one-off jobs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tasks_app import selectors
from tasks_app.cli.output import emit, next_run_text, table, timing_text
from tasks_app.cli.parser import EXIT_NOT_FOUND, CommandError, parse_time
from tasks_app.models import Schedule
from tasks_app.presenters import schedule_dict, task_dict
from tasks_app.services import schedules as svc


def _find_schedule(args: argparse.Namespace) -> Schedule:
    schedule = selectors.schedule_get(ref=args.schedule, tenant=args.tenant)
    if schedule is None:
        raise CommandError(f"no schedule {args.schedule!r} in tenant {args.tenant!r}", EXIT_NOT_FOUND)
    return schedule


def _print_schedule(d: dict[str, Any]) -> None:
    fields = [
        ("id", d["id"]), ("name", d["name"]), ("tenant", d["tenant"]), ("state", d["state"]),
        ("timing", timing_text(d)), ("next run", next_run_text(d)),
        ("next run (UTC)", d["next_run_at"] if d["state"] == "active" else None),
        ("last fired", d["last_fired_at"]), ("overlap", d["overlap_policy"]), ("tool", d["tool"]),
        ("model", d["model"]), ("group", d["worker_group"]), ("priority", d["priority"]),
        ("max attempts", d["max_attempts"]), ("timeout (s)", d["timeout_seconds"]),
        ("input files", ", ".join(d["input_files"])), ("output files", ", ".join(d["output_files"])),
        ("prompt", d["prompt"]), ("created", f"{d['created_at']} by {d['created_by'] or '?'}"),
    ]
    table(["field", "value"], [[key, value] for key, value in fields if value not in (None, "")],
          title=f"schedule {d['name']}")


def cmd_schedules(args: argparse.Namespace) -> int:
    if args.action == "list":
        data = [schedule_dict(s) for s in selectors.schedule_list(tenant=args.tenant)]
        emit(args, data, lambda rows: table(
            ["id", "name", "tool", "timing", "state", "overlap", "next run (local)", "last fired"],
            [[r["id"], r["name"], r["tool"], timing_text(r), r["state"], r["overlap_policy"], next_run_text(r),
              (r["last_fired_at"] or "")[:19]] for r in rows]))
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
        emit(args, schedule_dict(schedule), lambda d: print(
            f"schedule {d['id']} {d['name']!r}: {timing_text(d)}, next run {next_run_text(d)}"))
        return 0
    schedule = _find_schedule(args)
    if args.action == "get":
        emit(args, schedule_dict(schedule), _print_schedule)
    elif args.action in ("pause", "resume"):
        schedule = svc.schedule_set_enabled(schedule_id=schedule.pk, enabled=args.action == "resume")
        emit(args, schedule_dict(schedule), lambda d: print(
            f"schedule {d['id']} paused" if d["state"] == "paused" else
            f"schedule {d['id']} {'resumed' if d['enabled'] else 'paused'}; next run {next_run_text(d)}"))
    elif args.action == "trigger":
        firing = svc.schedule_fire(schedule_id=schedule.pk, source="trigger", actor=args.actor)
        if firing is None or firing.task is None:
            raise CommandError("this instant was already fired; try again", EXIT_NOT_FOUND)
        emit(args, task_dict(firing.task), lambda d: print(f"fired: task {d['id']}"))
    else:
        svc.schedule_delete(schedule_id=schedule.pk)
        emit(args, {"id": schedule.pk, "deleted": True}, lambda d: print(f"schedule {d['id']} deleted"))
    return 0
