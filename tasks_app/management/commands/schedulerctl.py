"""`python manage.py schedulerctl …`: the same command line as the `schedulerctl` console script."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand

from tasks_app.cli import run


class Command(BaseCommand):
    help = "Queue and inspect CLI Scheduler jobs (see `schedulerctl --help`)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("argv", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> None:
        # Bypass BaseCommand's own option parsing: everything after the command name is schedulerctl's.
        sys.exit(run(argv[2:]))

    def handle(self, *args: Any, **options: Any) -> None:
        sys.exit(run(options["argv"]))
