"""When schedules fire. Our own arithmetic (zoneinfo + croniter on wall-clock time), not beat's: beat only
wakes us up, and its crontab handling misfires on DST days (django-celery-beat#134).

Cron expressions are read in the schedule's timezone. A wall-clock time that does not exist (the hour skipped
when clocks go forward) is skipped; one that happens twice (clocks go back) fires once, at its first
occurrence. So "0 9 * * 1-5" in Europe/Berlin fires at 09:00 local on both sides of a DST change.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

MAX_SLOTS_SCANNED = 100_000


class TimingError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError(f"{name!r} is not a known IANA timezone (e.g. Europe/Berlin, UTC)") from None


def check_cron(expression: str) -> str:
    expression = " ".join(expression.split())
    if len(expression.split(" ")) != 5 or not croniter.is_valid(expression):
        raise TimingError(f"{expression!r} is not a 5-field cron expression (minute hour day month weekday)")
    return expression


def _exists(naive: datetime, tz: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def cron_times(expression: str, tz_name: str, after: datetime) -> Iterator[datetime]:
    """Fire times (UTC, aware) strictly after `after`, in order."""
    tz = zone(tz_name)
    local_after = after.astimezone(tz)
    # Start from the wall-clock time; in a repeated hour (fold=1) start before it so nothing is skipped,
    # and drop what is not strictly after `after` below.
    start = local_after.replace(tzinfo=None, fold=0) - timedelta(hours=1 if local_after.fold else 0)
    iterator = croniter(check_cron(expression), start)
    seen = 0
    while seen < MAX_SLOTS_SCANNED:
        seen += 1
        naive: datetime = iterator.get_next(datetime)
        if not _exists(naive, tz):
            continue  # skipped by a DST jump forward
        fire = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if fire > after:
            yield fire
    raise TimingError(f"{expression!r} yields no time within {MAX_SLOTS_SCANNED} candidates")


def next_cron(expression: str, tz_name: str, after: datetime) -> datetime:
    return next(cron_times(expression, tz_name, after))


def local(value: datetime | None, tz_name: str) -> datetime | None:
    return value.astimezone(zone(tz_name)) if value is not None else None
