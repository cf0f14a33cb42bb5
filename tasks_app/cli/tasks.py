"""`schedulerctl enqueue | list | get | cancel | retry | logs | files`: one task at a time."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from tasks_app import logstream, selectors
from tasks_app.cli.output import emit, short_id, table
from tasks_app.cli.parser import EXIT_NOT_FOUND, EXIT_WAIT_FAILED, CommandError, parse_time
from tasks_app.cli.repositories import with_options
from tasks_app.models import TERMINAL_STATUSES, EventSource, Task, TaskStatus, Tool
from tasks_app.presenters import diff_stat_text, excerpt, file_dict, run_dict, task_dict
from tasks_app.services.followups import task_follow_up
from tasks_app.services.tasks import InputFile, TaskSpec, task_cancel, task_create, task_retry
from tasks_app.validation import relative_path


def _find_task(task_id: str, *, tenant: str) -> Task:
    task = selectors.task_get(task_id=task_id, tenant=tenant)
    if task is None:
        raise CommandError(f"no task {task_id!r} (give the full id or a unique prefix of 6+ characters)",
                           EXIT_NOT_FOUND)
    return task


def _task_id(value: str, *, tenant: str) -> str:
    """The full id of a task named by a unique prefix (as tables show them); anything else goes to the service
    as given, which says what is wrong with it."""
    task = selectors.task_get(task_id=value, tenant=tenant)
    return str(task.pk) if task is not None else value


def cmd_enqueue(args: argparse.Namespace) -> int:
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
        worker_group=args.group, max_cost_usd=args.max_cost, max_turns=args.max_turns,
        idle_timeout_seconds=args.idle_timeout, repository=args.repo, ref=args.ref,
        depends_on=[_task_id(value, tenant=args.tenant) for value in args.after],
        require_outputs=not args.allow_missing_outputs,
    )
    try:
        task, created = task_create(spec=spec, tenant=args.tenant, created_by=args.actor, source=EventSource.CLI)
    except ValidationError as exc:
        raise with_options(exc, {"repository": "--repo", "ref": "--ref", "depends_on": "--after"}) from None
    return _report(args, task, "created" if created else "existing")


def _report(args: argparse.Namespace, task: Task, what: str) -> int:
    """Print the task just made; with --wait, once it has finished (exit 3 unless it succeeded)."""
    if args.wait:
        deadline = time.monotonic() + args.wait_timeout if args.wait_timeout else None
        status = task.status
        while status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(f"task {task.pk} is still {status} after {args.wait_timeout:g}s",
                                   EXIT_WAIT_FAILED)
            time.sleep(0.5)
            status = selectors.task_status(task_id=task.pk)
        task = _find_task(str(task.pk), tenant=args.tenant)
    data = task_dict(task, detail=args.wait)

    def render(d: dict[str, Any]) -> None:
        print(f"{what} task {d['id']} ({d['tool']}, priority {d['priority']}): {d['status']}")
        if args.wait:  # how it ended: the error of one that did not succeed, else the CLI's final message
            print(d["error_message"] or (d.get("result") or {}).get("final_message") or "")
            if d["missing_outputs"]:
                print(f"missing outputs: {', '.join(d['missing_outputs'])}")

    emit(args, data, render)
    return 0 if not args.wait or task.status == TaskStatus.SUCCEEDED else EXIT_WAIT_FAILED


def _choice(option: str, value: str | None, allowed: list[str]) -> None:
    """A filter naming nothing that exists is a mistake to report (the API's 400), not an empty table."""
    if value is not None and value not in allowed:
        raise CommandError(f"{option} {value!r} is not one of: {', '.join(allowed)}")


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    _choice("--status", args.status, list(TaskStatus.values))
    _choice("--tool", args.tool, list(Tool.values))
    tasks = selectors.task_list(tenant=args.tenant, status=args.status, tool=args.tool,
                                worker_group=args.group)[: args.limit]
    data = [task_dict(t) for t in tasks]

    def render(rows: list[dict[str, Any]]) -> None:
        # One line per task within 120 columns: free text is cut short (`get ID` has it all); the group a task
        # runs on names its tool too, so one column says both.
        table(["id", "status", "prio", "runs on", "tries", "created", "scheduled", "task", "last error"],
              [[short_id(r["id"]), r["status"] + ("*" if r["missing_outputs"] else ""), r["priority"],
                excerpt(r["worker_group"] or r["tool"], 16), f"{r['attempts_in_budget']}/{r['max_attempts']}",
                _minute(r["created_at"]), _minute(r["scheduled_at"]),
                f"schedule {excerpt(r['schedule'], 13)}" if r["schedule"] else excerpt(r["prompt_excerpt"], 22),
                excerpt(r["error_message"], 18)] for r in rows], compact=True)
        if any(r["missing_outputs"] for r in rows):
            print("* missing declared outputs: `schedulerctl get ID` names them")
        if rows:
            print("times in UTC; tries: attempts of the current budget / max_attempts")

    emit(args, data, render)
    return 0


def _minute(value: str | None) -> str:
    """An ISO timestamp (UTC) in a table: "12-01 09:30" this year, "2031-05-04" in another (never a date that reads
    as this year's when it is not)."""
    if not value:
        return ""
    return f"{value[5:10]} {value[11:16]}" if value[:4] == str(datetime.now(UTC).year) else value[:10]


def cmd_get(args: argparse.Namespace) -> int:
    task = _find_task(args.id, tenant=args.tenant)
    data = task_dict(task, detail=True)

    def render(d: dict[str, Any]) -> None:
        fields = {key: d[key] for key in ("id", "tool", "model") if d[key]}
        fields["status"] = d["status"] + (" (with missing outputs)" if d["missing_outputs"] else "")
        fields.update(priority=d["priority"], worker_group=d["worker_group"], attempt=_attempt_text(d),
                      created_at=d["created_at"], started_at=d["started_at"], finished_at=d["finished_at"],
                      error_message=d["error_message"])
        if d["output_files"]:
            fields["outputs"] = ", ".join(d["output_files"]) + (
                " (each required)" if d["require_outputs"] else " (missing ones allowed)")
        if d["missing_outputs"]:
            fields["missing outputs"] = ", ".join(d["missing_outputs"])
        for key, value in fields.items():
            if value not in (None, ""):
                print(f"{key:>14}: {value}")
        for key, label in (("depends_on", "depends on"), ("waiting_on", "waiting on"), ("dependents", "dependents")):
            if d[key]:
                print(f"{label:>14}: {', '.join(d[key])}")
        if task.repository is not None:
            ref = task.ref or f"{task.repository.default_ref} (its default)"
            print(f"{'repository':>14}: {task.repository.name}@{ref}")
        if d["result"]:
            print(f"{'final message':>14}: {d['result'].get('final_message')}")
        columns = ["attempt", "status", "group", "exit", "failure", "tokens in/out", "ms"]
        rows = [[r["attempt"], r["status"], r["worker_group"], r["exit_code"], r["failure_kind"],
                 _tokens_text(r["input_tokens"], r["output_tokens"]), r["latency_ms"]] for r in d["runs"]]
        if task.repository is not None:  # what each attempt started from, changed and pushed
            columns += ["base", "change", "pushed"]
            for row, r in zip(rows, d["runs"], strict=True):
                row += [r["base_sha"][:12], diff_stat_text(r["diff_stat"]), r["pushed_branch"]]
        table(columns, rows, title="runs")
        table(["from", "to", "source", "actor", "reason", "at"],
              [[e["from_status"], e["to_status"], e["source"], e["actor"], e["reason"], e["created_at"][:23]]
               for e in d["events"]], title="events")
        if len(d["conversation"]) > 1 or d["follow_ups"]:
            table(["turn", "task", "status", "prompt", "final message", "change"],
                  [[number, t["id"] + (" (this)" if t["id"] == d["id"] else ""), t["status"], excerpt(t["prompt"], 40),
                    excerpt(t["final_message"], 40), diff_stat_text(t["diff_stat"])]
                   for number, t in enumerate(d["conversation"], start=1)], title="conversation")
            if d["follow_ups"]:
                print(f"{'follow-ups':>14}: {', '.join(d['follow_ups'])}")

    emit(args, data, render)
    return 0


def _attempt_text(d: dict[str, Any]) -> str:
    """"2 of 3": attempts charged to the current budget; and the runs in all when they differ (an explicit retry
    starts a new budget; a run that failed for its account's sake is not charged)."""
    text = f"{d['attempts_in_budget']} of {d['max_attempts']}"
    if d["attempt"] == d["attempts_in_budget"]:
        return text
    retries = sum(1 for e in d["events"] if e["to_status"] == TaskStatus.QUEUED
                  and e["from_status"] in (TaskStatus.FAILED, TaskStatus.CANCELED))
    why = (f"after {retries} retr{'y' if retries == 1 else 'ies'}" if retries
           else "runs moved off a failing account are not charged")
    return f"{text} ({d['attempt']} in all, {why})"


def _tokens_text(input_tokens: int | None, output_tokens: int | None) -> str:
    """"1200/340"; "-" when the CLI reported none (not "None/None")."""
    if input_tokens is None and output_tokens is None:
        return "-"
    return f"{'?' if input_tokens is None else input_tokens}/{'?' if output_tokens is None else output_tokens}"


def cmd_follow_up(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    task = task_follow_up(task_id=_find_task(args.id, tenant=args.tenant).pk, prompt=prompt,
                          created_by=args.actor, source=EventSource.CLI)
    return _report(args, task, f"follow-up of {task.parent_id}:")


def cmd_cancel(args: argparse.Namespace) -> int:
    task = task_cancel(task_id=_find_task(args.id, tenant=args.tenant).pk, source=EventSource.CLI, actor=args.actor)
    emit(args, task_dict(task), lambda d: print(
        f"task {d['id']} {'canceled' if d['status'] == 'canceled' else 'is being canceled (running)'}"))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    task = task_retry(task_id=_find_task(args.id, tenant=args.tenant).pk, source=EventSource.CLI, actor=args.actor)
    emit(args, task_dict(task), lambda d: print(f"task {d['id']} re-queued"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    task = _find_task(args.id, tenant=args.tenant)
    if args.follow:
        feed = logstream.LOGS if args.raw else logstream.TIMELINE
        for event in logstream.follow(task.pk, max_seconds=args.max_seconds, feed=feed):
            if args.json:
                print(json.dumps({"event": event.kind, "data": event.data, "seq": event.seq}), flush=True)
            elif event.kind not in ("stdout", "stderr", "attempt", "end", "timeout"):
                print(timeline_line(json.loads(event.data)), flush=True)
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
    run = selectors.task_latest_run(task_id=task.pk)
    if run is None:
        raise CommandError(f"task {args.id} has not run yet", EXIT_NOT_FOUND)
    data = run_dict(run, with_output=True)
    if run.finished_at is None:  # still running: what it has printed so far
        chunks = selectors.run_log_chunks(run_id=run.pk, after=0, limit=100_000)
        data["stdout"] = "".join(c.data for c in chunks if c.stream == "stdout")
        data["stderr"] = "".join(c.data for c in chunks if c.stream == "stderr")

    def render(d: dict[str, Any]) -> None:
        sys.stdout.write(d["stdout"])
        sys.stderr.write(d["stderr"])

    emit(args, data, render)
    return 0


def timeline_line(event: dict[str, Any]) -> str:
    """One RunEvent as a line for people: time, kind, tool, summary, running cost."""
    data, kind = event["data"], event["kind"]
    at = event["at"][11:19]
    if kind == "tool_call":
        text = f"{data.get('tool', '?')}  {data.get('summary', '')}"
    elif kind == "tool_result":
        text = f"{data.get('tool', '')} {'ok' if data.get('ok') else 'error'} ({data.get('size', 0)} bytes)".strip()
    elif kind == "usage":
        cost = data.get("cost_usd")
        spent = f"${cost:.4f}{' (estimate)' if data.get('estimate') else ''}" if isinstance(cost, int | float) else ""
        text = (f"turn {data.get('turns', '?')}  in {data.get('input_tokens', 0)} / out "
                f"{data.get('output_tokens', 0)} tokens  {spent}").rstrip()
    elif kind == "rate_limit":
        resets = data.get("resets_at")
        when = f" (resets {datetime.fromtimestamp(resets, UTC):%Y-%m-%d %H:%M} UTC)" if isinstance(
            resets, int | float) else ""
        text = f"{data.get('message', '')}{when}"
    elif kind == "result":
        text = f"{'ok' if data.get('ok') else 'failed'}  {_first_line(data.get('text', ''))}"
    else:  # message, error
        text = _first_line(data.get("text") or data.get("message") or "")
    return f"{at}  {kind:<11}  {text}"


def _first_line(value: object, width: int = 160) -> str:
    line = str(value).strip().splitlines()[0] if str(value).strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def cmd_files(args: argparse.Namespace) -> int:
    task = _find_task(args.id, tenant=args.tenant)
    files = list(selectors.task_files(task_id=task.pk))
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
    emit(args, data, lambda rows: table(
        ["id", "direction", "path", "bytes", "sha256", "attempt"],
        [[r["id"], r["direction"], r["path"], r["size_bytes"], r["sha256"][:16], r["attempt"]] for r in rows],
    ))
    return 0
