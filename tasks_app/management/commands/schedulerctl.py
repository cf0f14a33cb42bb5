"""`python manage.py schedulerctl …`: the same command line as the `schedulerctl` console script."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand

from tasks_app.cli import run, run_and_exit_quietly_on_a_closed_pipe


class Command(BaseCommand):
    help = "Queue and inspect CLI Scheduler jobs (see `schedulerctl --help`)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("argv", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> None:
        # Bypass BaseCommand's own option parsing: everything after the command name is schedulerctl's. This is
        # `manage.py`'s own process: the command line's logging and its quiet end on a closed pipe.
        sys.exit(run_and_exit_quietly_on_a_closed_pipe(argv[2:]))

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command(): inside another program, whose logging and stdout stay its own.
        sys.exit(run(options["argv"]))
