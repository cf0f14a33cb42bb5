"""`schedulerctl`: the command line, working through the same services and selectors as the API.

Exit codes: 0 ok, 1 not found / not allowed now, 2 bad input, 3 `--wait` ended without success.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import logging.config
import os
import signal
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


def configure_logging(verbosity: int) -> None:
    """Log lines for a person at a terminal: WARNING and above (`-v` INFO, `-vv` DEBUG), plain, on stderr. The
    settings' LOGGING is for the services (JSON lines at INFO for a collector); under it every `ask` would print the
    HTTP client's "HTTP Request: POST …" line. This process only: the services keep theirs."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain"}},
        "root": {"handlers": ["stderr"], "level": level},
        # Django's loggers carry their own handlers and levels (DEFAULT_LOGGING): send them through the one above.
        "loggers": {"django": {"handlers": [], "level": logging.NOTSET, "propagate": True}},
    })


def run(argv: list[str], *, own_process: bool = False) -> int:
    """Parse and run; every failure becomes one line on stderr and a non-zero exit code. `own_process`: the
    command line is this process (the entry points), so its logging is the command line's (`configure_logging`)."""
    from django.core.exceptions import ValidationError

    from tasks_app.audit import acting, command_line_actor
    from tasks_app.models import EventSource
    from tasks_app.services.repositories import RepositoryInUse
    from tasks_app.services.tasks import IdempotencyConflict, TaskStateError
    from tasks_app.transitions import InvalidTransition

    try:
        args = build_parser().parse_args(argv)
        if own_process:
            configure_logging(args.verbose)
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
    sys.exit(run_and_exit_quietly_on_a_closed_pipe(sys.argv[1:] if argv is None else argv))


def run_and_exit_quietly_on_a_closed_pipe(argv: list[str]) -> int:
    """`run`, as the process. A reader that stops early (`schedulerctl list --json | head -1`) is not an error worth
    a traceback: stop quietly with the status of a process ended by SIGPIPE, as other command-line tools do."""
    try:
        code = run(argv, own_process=True)
        sys.stdout.flush()  # output that fit in the buffer meets the closed pipe here
    except BrokenPipeError:
        # Python's flush of stdout at exit would fail again: point the descriptor at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    return code
