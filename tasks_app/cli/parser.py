"""The `schedulerctl` argument parser, its error type and exit codes, and the input parsing the commands share.

Nothing here imports Django: `schedulerctl --help` and bad-usage errors need no settings or database.
"""

from __future__ import annotations

import argparse
import os
import re
from datetime import UTC, datetime, timedelta
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
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log lines on stderr: -v INFO, -vv DEBUG (default: warnings and errors only)")
    # The global options are accepted after the subcommand too (`schedulerctl enqueue … --json`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--tenant", default=argparse.SUPPRESS)
    common.add_argument("--actor", default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser = _with_parents(sub.add_parser, common)  # type: ignore[method-assign]

    p = sub.add_parser("enqueue", help="create a task")
    p.add_argument("tool")
    p.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    p.add_argument("--model", default="")
    p.add_argument("--priority", type=int, default=5)
    p.add_argument("--input", action="append", default=[], metavar="LOCAL[:REMOTE]")
    p.add_argument("--output", action="append", default=[], metavar="PATH",
                   help="a file (or glob) to collect; one not delivered fails the task (see --allow-missing-outputs)")
    p.add_argument("--allow-missing-outputs", action="store_true",
                   help="succeed even if an --output was not produced (the task is marked with what is missing)")
    p.add_argument("--group")
    p.add_argument("--idempotency-key")
    p.add_argument("--at", help="not before: ISO 8601 time, or +30s / +10m / +2h")
    p.add_argument("--timeout", type=int, help="seconds")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--max-cost", type=float, metavar="USD", help="stop an attempt once it has spent this much")
    p.add_argument("--max-turns", type=int, help="stop an attempt after this many agent turns")
    p.add_argument("--idle-timeout", type=int, metavar="SECONDS",
                   help="kill an attempt silent this long (default SCHEDULER_IDLE_TIMEOUT)")
    p.add_argument("--after", action="append", default=[], metavar="ID",
                   help="run only once this task succeeded (repeatable); its outputs arrive under ID/")
    p.add_argument("--repo", metavar="NAME", help="run in a checkout of this repository (see `repos list`)")
    p.add_argument("--ref", default="", help="branch, tag or commit of --repo (default: the repository's default_ref)")
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
    p.add_argument("--follow", "-f", action="store_true",
                   help="follow the run live until the task ends: its timeline (what the agent does, spend so far)")
    p.add_argument("--raw", action="store_true", help="with --follow: the CLI's own stdout/stderr instead")
    p.add_argument("--max-seconds", type=float, default=24 * 3600, help=argparse.SUPPRESS)
    p = sub.add_parser("follow-up", help="the next turn: resume a finished task's CLI session with a new prompt")
    p.add_argument("id")
    p.add_argument("prompt")
    p.add_argument("--wait", action="store_true", help="wait until the follow-up finishes")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after S seconds")
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
        for window, text in (("daily", "per UTC day"), ("monthly", "per calendar month (UTC)")):
            p.add_argument(f"--{window}-budget", metavar="USD",
                           help=f"stop giving the account work once its runs cost this much {text}; "
                                "'none' removes the budget")
    for name in ("pause", "resume"):
        groups.add_parser(name).add_argument("name")

    repos = sub.add_parser("repos", help="git repositories tasks run on").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    repos.add_parser = _with_parents(repos.add_parser, common)  # type: ignore[method-assign]
    repos.add_parser("list")
    p = repos.add_parser("add", help="NAME URL, in --tenant; a secret is read from the environment or a file, "
                                     "never from the command line")
    p.add_argument("name")
    p.add_argument("url", help="https://…, ssh://…, user@host:path, file://… or an absolute path")
    p.add_argument("--ref", default="HEAD", help="branch, tag or commit when a task names none (default HEAD)")
    p.add_argument("--push-prefix", default="", metavar="PREFIX",
                   help="push each task's change to the branch PREFIX<task id> (e.g. scheduler/); default: never")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--token-env", metavar="VAR", help="an HTTPS token, from this environment variable")
    secret.add_argument("--ssh-key-file", metavar="PATH", help="an SSH private (deploy) key, from this file")
    p.add_argument("--username", help="with --token-env: the user name the token goes with")
    repos.add_parser("rm", help="delete a repository no task refers to").add_argument("name")

    p = sub.add_parser("usage", help="runs, tokens and cost per UTC day, per group or per tenant")
    p.add_argument("--days", type=int, default=7, help="the last N UTC days, today included (default 7)")
    p.add_argument("--by", choices=["group", "tenant"], default="group")
    p.add_argument("--group", help="only this worker group")

    workers = sub.add_parser("workers", help="registered Celery workers and their heartbeats").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    workers.add_parser = _with_parents(workers.add_parser, common)  # type: ignore[method-assign]
    p = workers.add_parser("list")
    p.add_argument("--all", action="store_true", help="also stopped and silent workers (kept for a week)")
    p.add_argument("--queue", help="only workers consuming this queue")

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


_RELATIVE = re.compile(r"^\+(\d+)([smhd])$")


def parse_time(text: str) -> datetime:
    """`--at`: an ISO 8601 time (UTC when it names no zone), or relative to now: +30s, +10m, +2h, +1d."""
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
