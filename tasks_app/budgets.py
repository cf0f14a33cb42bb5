"""The windows of an account's budget (SPEC §8) and what was spent in them: plain values, no queries.

A group's `daily_budget_usd` covers the UTC day, its `monthly_budget_usd` the calendar month in UTC, whatever the
site's TIME_ZONE: an account's provider bills in its own time, and a fixed zone makes the window the same for every
box, the API and the dashboard. A run counts in the window in which it *started*, with its cost so far while it is
in flight, so a long run cannot slip past a budget by finishing after midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

ZERO = Decimal("0")
DAILY, MONTHLY = "daily", "monthly"
BUDGET_FIELDS = {DAILY: "daily_budget_usd", MONTHLY: "monthly_budget_usd"}


@dataclass(frozen=True)
class Window:
    start: datetime  # inclusive
    end: datetime  # exclusive

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def day_window(now: datetime) -> Window:
    start = day_start(now.astimezone(UTC).date())
    return Window(start, start + timedelta(days=1))


def month_window(now: datetime) -> Window:
    today = now.astimezone(UTC).date()
    first = today.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return Window(day_start(first), day_start(following))


def window(kind: str, now: datetime) -> Window:
    return day_window(now) if kind == DAILY else month_window(now)


@dataclass(frozen=True)
class GroupSpend:
    """What a group's runs started in the current UTC day and month cost (finished ones, and the cost so far of
    those in flight)."""

    today_usd: Decimal = ZERO
    month_usd: Decimal = ZERO

    def of(self, kind: str) -> Decimal:
        return self.today_usd if kind == DAILY else self.month_usd
