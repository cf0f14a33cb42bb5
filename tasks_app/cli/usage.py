"""`schedulerctl usage`: runs, tokens and cost per UTC day, per worker group or per tenant (every tenant: the
command line is the box's operator)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from django.utils import timezone

from tasks_app import selectors
from tasks_app.cli.output import emit, table
from tasks_app.cli.parser import CommandError
from tasks_app.presenters import usage_dict, usage_totals

MAX_DAYS = 366


def cmd_usage(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_DAYS:
        raise CommandError(f"--days must be from 1 to {MAX_DAYS}")
    until = timezone.now().date()
    since = until - timedelta(days=args.days - 1)
    rows = selectors.usage_per_day(since=since, until=until, by=args.by, group=args.group)
    data = {"since": since.isoformat(), "until": until.isoformat(), "by": args.by,
            "rows": [usage_dict(row, by=args.by) for row in rows], "totals": usage_totals(rows)}
    key = "worker_group" if args.by == "group" else "tenant"

    def render(d: dict) -> None:
        totals = d["totals"]
        table(["day", args.by, "runs", "input tokens", "output tokens", "cost (USD)"],
              [[r["day"], r[key] or "(no group)", r["runs"], f"{r['input_tokens']:,}", f"{r['output_tokens']:,}",
                f"{r['cost_usd']:.4f}"] for r in d["rows"]]
              + [["total", "", totals["runs"], f"{totals['input_tokens']:,}", f"{totals['output_tokens']:,}",
                  f"{totals['cost_usd']:.4f}"]],
              title=f"usage {d['since']} to {d['until']} (UTC days)")

    emit(args, data, render)
    return 0
