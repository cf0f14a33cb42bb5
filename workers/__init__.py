"""Celery app, Celery tasks and the CLI executors. `celery -A workers worker -Q <group>` finds `app` here."""

from __future__ import annotations

from workers.celery import app

__all__ = ("app",)
