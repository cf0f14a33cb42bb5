"""`schedulerctl ask`: a job described in plain words, proposed by the intake model, created on confirmation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tasks_app.cli.output import next_run_text, table, timing_text
from tasks_app.cli.parser import EXIT_NOT_FOUND, CommandError
from tasks_app.presenters import schedule_dict, task_dict
from tasks_app.services.intake import IntakeError, intake_confirm, intake_propose


def cmd_ask(args: argparse.Namespace) -> int:
    zone = args.timezone or os.environ.get("TZ", "").lstrip(":") or "UTC"
    try:
        result = intake_propose(text=args.sentence, zone_name=zone)
    except IntakeError as exc:
        raise CommandError(str(exc), EXIT_NOT_FOUND) from None
    proposal = result.proposal.as_dict()
    if not args.json:
        table(["field", "value"], [[key, ", ".join(value) if isinstance(value, list) else value]
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
        "schedule": schedule_dict(created) if result.proposal.kind == "schedule" and created else None,
    }
    if args.json:
        print(json.dumps(data, default=str))
    elif data["task"]:
        print(f"created task {data['task']['id']} ({data['task']['tool']}): {data['task']['status']}")
    elif data["schedule"]:
        d = data["schedule"]
        print(f"created schedule {d['id']} {d['name']!r}: {timing_text(d)}, next run {next_run_text(d)}")
    elif proposal["kind"] == "none":
        print(f"nothing to run: {proposal['reason']}")
    return 0
