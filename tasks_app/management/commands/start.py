"""`python manage.py start`: migrate, seed demo groups, and run web (the ASGI app, live streams included), beat,
control and one worker per enabled group through honcho. The one-box way to try CLI Scheduler (README: `make run`)."""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from tasks_app.models import WorkerGroup
from tasks_app.services.groups import group_create

DEMO_GROUPS = (("claude", "main"), ("codex", "main"), ("gemini", "main"))


class Command(BaseCommand):
    help = "Migrate, create demo worker groups if there are none, and start every process (honcho)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-run", action="store_true", help="prepare and write the Procfile only")

    def handle(self, *args: Any, port: int, no_run: bool, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        if not WorkerGroup.objects.exists():
            for tool, account in DEMO_GROUPS:
                group_create(tool=tool, account=account, max_concurrent=2)
            self.stdout.write("created demo worker groups: " + ", ".join(f"{t}-{a}" for t, a in DEMO_GROUPS))
        self._ensure_admin()
        procfile = settings.VAR_DIR / "Procfile.local"
        procfile.write_text(self._procfile(port))
        self.stdout.write(f"wrote {procfile}; admin at http://127.0.0.1:{port}/admin/")
        if no_run:
            return
        honcho = os.path.join(os.path.dirname(sys.executable), "honcho")
        # Replace this process with honcho; the argv is entirely ours.
        os.execv(honcho, [honcho, "-f", str(procfile), "-d", str(settings.BASE_DIR), "start"])  # noqa: S606

    def _ensure_admin(self) -> None:
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser("admin", "", password)
        path = settings.VAR_DIR / "admin_password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        self.stdout.write(f"created superuser 'admin'; its password is in {path}")

    def _procfile(self, port: int) -> str:
        python = shlex.quote(sys.executable)
        celery = f"{python} -m celery -A workers"
        lines = [
            # One ASGI server for everything on the one box: API, admin (and its static files) and the live
            # streams, which it serves without holding a thread each (docs/architecture.md, "Live streams").
            f"web: SCHEDULER_SERVE_STATIC=true {python} -m uvicorn scheduler_site.asgi:application --host 127.0.0.1 "
            f"--port {port} --lifespan off --timeout-graceful-shutdown 5",
            f"beat: {celery} beat -S django_celery_beat.schedulers:DatabaseScheduler --loglevel INFO",
            f"control: {celery} worker -Q control -c 1 -n control@%h --loglevel INFO",
        ]
        for group in WorkerGroup.objects.filter(enabled=True).order_by("name"):
            lines.append(f"{group.name}: {celery} worker -Q {group.name} -c {group.max_concurrent} "
                         f"-n {group.name}@%h --loglevel INFO")
        return "\n".join(lines) + "\n"
