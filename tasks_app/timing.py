"""When schedules fire. Our own arithmetic (zoneinfo + croniter on wall-clock time), not beat's: beat only
wakes us up, and its crontab handling misfires on DST days (django-celery-beat#134).

Cron expressions are read in the schedule's timezone. A wall-clock time that does not exist (the hour skipped
when clocks go forward) is skipped; one that happens twice (clocks go back) fires once, at its first
occurrence. So "0 9 * * 1-5" in Europe/Berlin fires at 09:00 local on both sides of a DST change.

An expression must be one that both croniter and beat read: beat wakes us with the same fields, and beat quietly
drops an entry whose field its parser refuses (croniter's L, #, ?), so that schedule would never fire.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from django.core.exceptions import ValidationError as DjangoValidationError
from django_celery_beat import validators as beat_validators

MAX_SLOTS_SCANNED = 100_000
# (name, what it takes, bounds, beat's check) per field, in order.
CRON_FIELDS = (
    ("minute", "0-59", (0, 59), beat_validators.minute_validator),
    ("hour", "0-23", (0, 23), beat_validators.hour_validator),
    ("day of month", "1-31", (1, 31), beat_validators.day_of_month_validator),
    ("month", "1-12 or jan-dec", (1, 12), beat_validators.month_of_year_validator),
    ("day of week", "0-6 or sun-sat (7 is sunday)", (0, 7), beat_validators.day_of_week_validator),
)
# How far `cron_min_gap` looks: enough firings to cross hour, day and month boundaries, and a little more than a
# year, over which every pattern repeats (a leap day's excepted: that one fires years apart anyway).
GAP_SAMPLES = 1000
GAP_HORIZON = timedelta(days=400)
_NUMBER = re.compile(r"(?<![/\d])\d+")  # the values of a field, not its steps


class TimingError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError(f"{name!r} is not a known IANA timezone (e.g. Europe/Berlin, UTC)") from None


def check_cron(expression: str) -> str:
    """The expression, normalised; a TimingError naming the first bad field and what it takes otherwise."""
    expression = " ".join(expression.split())
    values = expression.split(" ")
    if len(values) != 5:
        raise TimingError(f"{expression!r} is not a 5-field cron expression (minute hour day month weekday)")
    for position, value in enumerate(values):
        if not _field_valid(position, value):
            name, allowed, (low, high), _ = CRON_FIELDS[position]
            out_of_range = any(not low <= int(number) <= high for number in _NUMBER.findall(value))
            problem = "is out of range" if out_of_range else "is not valid"
            raise TimingError(f"{expression!r}: {name} {value!r} {problem}; {name} takes {allowed}")
    if not croniter.is_valid(expression):
        raise TimingError(f"{expression!r} is not a 5-field cron expression (minute hour day month weekday)")
    return expression


def _field_valid(position: int, value: str) -> bool:
    alone = ["*"] * 5
    alone[position] = value
    if not croniter.is_valid(" ".join(alone)):
        return False
    try:
        CRON_FIELDS[position][3](value)
    except (DjangoValidationError, ValueError):
        return False
    return True


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
        try:
            naive: datetime = iterator.get_next(datetime)
        except CroniterBadDateError:
            raise TimingError(f"{expression!r} never fires: no date matches its day of month and month "
                              "(like 30 February)") from None
        if not _exists(naive, tz):
            continue  # skipped by a DST jump forward
        fire = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if fire > after:
            yield fire
    raise TimingError(f"{expression!r} yields no time within {MAX_SLOTS_SCANNED} candidates")


def next_cron(expression: str, tz_name: str, after: datetime) -> datetime:
    return next(cron_times(expression, tz_name, after))


def cron_min_gap(expression: str, tz_name: str, after: datetime, *, below: float = 0) -> float | None:
    """The smallest gap, in seconds, between consecutive fire times after `after` (bounded: GAP_SAMPLES firings
    within GAP_HORIZON); it stops at the first gap under `below`. None if it fires only once in that span.
    TimingError if it never fires."""
    times = cron_times(expression, tz_name, after)
    first = previous = next(times)
    smallest: float | None = None
    for _ in range(GAP_SAMPLES):
        fire = next(times)
        if fire - first > GAP_HORIZON:
            break
        gap = (fire - previous).total_seconds()
        smallest = gap if smallest is None else min(smallest, gap)
        if smallest < below:
            break
        previous = fire
    return smallest


def local(value: datetime | None, tz_name: str) -> datetime | None:
    return value.astimezone(zone(tz_name)) if value is not None else None
