"""`schedulerctl groups list | add | set | pause | resume`: worker groups (one CLI account each), and
`schedulerctl workers list`: the workers serving them."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tasks_app import selectors
from tasks_app.cli.output import emit, table
from tasks_app.cli.parser import CommandError
from tasks_app.presenters import group_dict, worker_dict
from tasks_app.services import groups as svc


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


def cmd_groups(args: argparse.Namespace) -> int:
    if args.action == "list":
        # rate_limited_until stays set once it has passed: the column shows only a limit in force now.
        data = [group_dict(g) for g in selectors.groups_attach_live_workers(selectors.group_list())]
        emit(args, data, lambda rows: table(
            ["name", "tool", "health", "workers", "running", "queued", "cap", "today $ / budget",
             "month $ / budget", "rate-limited until", "credentials"],
            [[r["name"], r["tool"], r["health"], r["live_workers"], r["running"], r["queued"], r["max_concurrent"],
              _spend(r["spend_today_usd"], r["daily_budget_usd"]),
              _spend(r["spend_month_usd"], r["monthly_budget_usd"]),
              r["rate_limited_until"] if r["rate_limited"] else "", ", ".join(r["credentials"])] for r in rows],
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
                **_budgets(args),
            )
        else:
            group = svc.group_update(name=args.name, changes=_group_changes(args, credentials=credentials, env=env))
    emit(args, group_dict(group), _print_group)
    return 0


def _spend(spent: float, budget: float | None) -> str:
    return f"{spent:.2f}" if budget is None else f"{spent:.2f} / {budget:.2f}"


def _budgets(args: argparse.Namespace) -> dict[str, str | None]:
    """--daily-budget / --monthly-budget as given ('none' clears); the service checks the amounts."""
    return {f"{window}_budget_usd": None if value.strip().lower() in ("none", "off", "") else value
            for window in ("daily", "monthly") if (value := getattr(args, f"{window}_budget")) is not None}


def _print_group(d: dict[str, Any]) -> None:
    print(f"group {d['name']}: {'enabled' if d['enabled'] else 'paused'}, cap {d['max_concurrent']}, "
          f"health {d['health']}, credentials: {', '.join(d['credentials']) or 'none'}")
    budgets = [f"{window} ${d[f'spend_{spent}_usd']:.2f} of ${d[f'{window}_budget_usd']:.2f}"
               for window, spent in (("daily", "today"), ("monthly", "month")) if d[f"{window}_budget_usd"] is not None]
    if budgets:
        print(f"budgets: {', '.join(budgets)}")
    if not d["live_workers"]:
        print(f"no worker consumes its queue yet; start one on a box (in this project, with its environment):\n"
              f"  {d['worker_command']}")


def cmd_workers(args: argparse.Namespace) -> int:
    data = [worker_dict(w) for w in selectors.worker_list(alive=None if args.all else True, queue=args.queue)]
    emit(args, data, lambda rows: table(
        ["hostname", "pid", "alive", "queues", "slots", "sandbox", "last heartbeat", "started"],
        [[r["hostname"], r["pid"], "yes" if r["alive"] else "no", ", ".join(r["queues"]), r["concurrency"],
          r["sandbox"], r["last_heartbeat"], r["started_at"]] for r in rows],
    ))
    return 0


def _group_changes(args: argparse.Namespace, *, credentials: dict[str, str], env: dict[str, str]) -> dict[str, Any]:
    """`groups set`: --env and --extra-arg add to what the group has; a missing group is group_update's error."""
    current = selectors.group_get(name=args.name)
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
    changes.update(_budgets(args))
    return changes
