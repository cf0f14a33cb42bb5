"""`schedulerctl`: the command line, working through the same services and selectors as the API.

Exit codes: 0 ok, 1 not found / not allowed now, 2 bad input, 3 `--wait` ended without success.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from tasks_app.cli.parser import EXIT_NOT_FOUND, EXIT_USAGE, CommandError, build_parser

# Command name -> (module in this package, function). The command modules import the models, so they load
# only once a command runs: after main() has called django.setup(), and `ask`'s OpenAI client only for `ask`.
COMMANDS: dict[str, tuple[str, str]] = {
    "enqueue": ("tasks", "cmd_enqueue"), "list": ("tasks", "cmd_list"), "get": ("tasks", "cmd_get"),
    "cancel": ("tasks", "cmd_cancel"), "retry": ("tasks", "cmd_retry"),
    "follow-up": ("tasks", "cmd_follow_up"), "logs": ("tasks", "cmd_logs"),
    "files": ("tasks", "cmd_files"), "groups": ("groups", "cmd_groups"), "workers": ("groups", "cmd_workers"),
    "schedules": ("schedules", "cmd_schedules"), "usage": ("usage", "cmd_usage"),
    "repos": ("repositories", "cmd_repos"),
    "users": ("accounts", "cmd_users"), "tokens": ("accounts", "cmd_tokens"), "ask": ("intake", "cmd_ask"),
}


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    module_name, function_name = COMMANDS[name]
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), function_name)


def _validation_message(exc: Any) -> str:
    parts = []
    for name, messages in exc.message_dict.items():
        label = "" if name == "__all__" else f"{name}: "
        parts.append(label + "; ".join(messages))
    return "; ".join(parts)


def run(argv: list[str]) -> int:
    """Parse and run; every failure becomes one line on stderr and a non-zero exit code."""
    from django.core.exceptions import ValidationError

    from tasks_app.audit import acting, command_line_actor
    from tasks_app.models import EventSource
    from tasks_app.services.repositories import RepositoryInUse
    from tasks_app.services.tasks import IdempotencyConflict, TaskStateError
    from tasks_app.transitions import InvalidTransition

    try:
        args = build_parser().parse_args(argv)
        with acting(EventSource.CLI, command_line_actor()):
            return _command(args.command)(args)
    except CommandError as exc:
        code, message = exc.code, str(exc)
    except ValidationError as exc:
        code, message = EXIT_USAGE, _validation_message(exc)
    except (TaskStateError, InvalidTransition, IdempotencyConflict, RepositoryInUse) as exc:
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
