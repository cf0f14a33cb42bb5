"""`schedulerctl users add` and `schedulerctl tokens create | list | revoke`: who may use the API."""

from __future__ import annotations

import argparse

from tasks_app import selectors
from tasks_app.cli.output import emit, table
from tasks_app.cli.parser import EXIT_NOT_FOUND, CommandError
from tasks_app.presenters import token_dict
from tasks_app.services.accounts import token_create, token_revoke, user_create


def cmd_users(args: argparse.Namespace) -> int:
    user = user_create(username=args.name, tenant=args.tenant, staff=args.staff)
    data = {"username": user.get_username(), "tenant": args.tenant, "staff": user.is_staff}
    emit(args, data, lambda d: print(f"user {d['username']} (tenant {d['tenant']}{', staff' if d['staff'] else ''})"))
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    if args.action == "create":
        token, key = token_create(username=args.user, name=args.name)
        data = {**token_dict(token), "key": key}
        emit(args, data, lambda d: print(f"{d['key']}\n(token {d['id']} for {d['user']}: shown once, store it now)"))
    elif args.action == "list":
        data_rows = [token_dict(t) for t in selectors.token_list(username=args.user)]
        emit(args, data_rows, lambda rows: table(
            ["id", "user", "name", "prefix", "created", "last used", "revoked"],
            [[r["id"], r["user"], r["name"], r["prefix"] + "…", r["created_at"][:19], (r["last_used_at"] or "")[:19],
              r["revoked"]] for r in rows]))
    else:
        if selectors.token_get(token_id=args.id) is None:
            raise CommandError(f"no token {args.id}", EXIT_NOT_FOUND)
        token = token_revoke(token_id=args.id)
        emit(args, token_dict(token), lambda d: print(f"token {d['id']} revoked"))
    return 0
