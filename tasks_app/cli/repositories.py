"""`schedulerctl repos list | add | rm`: git repositories tasks run on (SPEC §8). A secret never comes from argv
(it would sit in the shell's history and every process list): `--token-env VAR` or `--ssh-key-file PATH`."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from tasks_app import selectors
from tasks_app.cli.output import emit, table
from tasks_app.cli.parser import EXIT_NOT_FOUND, CommandError
from tasks_app.presenters import repository_dict
from tasks_app.services import repositories as svc

# The service names its fields; say which option set each one.
_OPTIONS = {"name": "NAME", "url": "URL", "default_ref": "--ref", "push_prefix": "--push-prefix",
            "credentials": "--token-env/--ssh-key-file", "tenant": "--tenant"}
MAX_KEY_FILE_BYTES = 64 * 1024
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def with_options(exc: ValidationError, options: dict[str, str]) -> ValidationError:
    """The same errors, each field named with the option that set it: `default_ref (--ref): …`."""
    return ValidationError({f"{name} ({options[name]})" if name in options else name: messages
                            for name, messages in exc.message_dict.items()})


def _credentials(args: argparse.Namespace) -> dict[str, str]:
    if args.username is not None and args.token_env is None:
        raise CommandError("--username goes with --token-env (the user name of the token)")
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            # `--token SECRET` reaches here too (argparse completes --token to --token-env): name the variable
            # only when it looks like one, so a mistyped secret is not printed back.
            shown = args.token_env if _ENV_NAME.match(args.token_env) else "the variable given"
            raise CommandError(f"--token-env: {shown} is not set (or empty) in this environment; give the NAME of a "
                               "variable holding the token, never the token itself")
        return {"token": token, **({"username": args.username} if args.username is not None else {})}
    if args.ssh_key_file is not None:
        path = Path(args.ssh_key_file)
        if not path.is_file():
            raise CommandError(f"--ssh-key-file {args.ssh_key_file!r}: no such file")
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise CommandError(f"--ssh-key-file {args.ssh_key_file!r}: larger than {MAX_KEY_FILE_BYTES} bytes, "
                               "not a private key")
        try:
            return {"ssh_key": path.read_text()}
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--ssh-key-file {args.ssh_key_file!r}: cannot read it as text "
                               f"({type(exc).__name__})") from None
    return {}


def _print_repository(d: dict[str, Any]) -> None:
    push = f"pushes to {d['push_prefix']}<task id>" if d["push_prefix"] else "never pushes"
    names = d["credential_names"]
    credentials = "unreadable (encryption key changed)" if names is None else ", ".join(names) or "none"
    print(f"repository {d['name']} (tenant {d['tenant']}): {d['url']} @ {d['default_ref']}, {push}, "
          f"credentials: {credentials}")


def cmd_repos(args: argparse.Namespace) -> int:
    if args.action == "list":
        data = [repository_dict(r) for r in selectors.repository_list(tenant=args.tenant)]
        emit(args, data, lambda rows: table(
            ["name", "url", "default ref", "push prefix", "credentials"],
            [[r["name"], r["url"], r["default_ref"], r["push_prefix"],
              "unreadable" if r["credential_names"] is None else ", ".join(r["credential_names"])] for r in rows],
        ))
        return 0
    if args.action == "add":
        try:
            repository = svc.repository_create(
                tenant=args.tenant, name=args.name, url=args.url, credentials=_credentials(args),
                default_ref=args.ref, push_prefix=args.push_prefix, created_by=args.actor,
            )
        except ValidationError as exc:
            raise with_options(exc, _OPTIONS) from None
        emit(args, repository_dict(repository), _print_repository)
        return 0
    if selectors.repository_get(tenant=args.tenant, name=args.name) is None:
        raise CommandError(f"no repository {args.name!r} in tenant {args.tenant!r}", EXIT_NOT_FOUND)
    svc.repository_delete(tenant=args.tenant, name=args.name)
    emit(args, {"name": args.name, "tenant": args.tenant, "deleted": True},
         lambda d: print(f"repository {d['name']} deleted"))
    return 0
