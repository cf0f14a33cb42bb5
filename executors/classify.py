"""Failure classification and reset-time parsing from the CLIs' error texts (see shared CLI_FACTS.md)."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from executors.base import FailureKind

RATE_LIMIT_PATTERNS = re.compile(
    r"hit your (?:session |weekly |usage )?limit|limit reached|usage limit|rate[_ ]limit|too many requests"
    r"|\b429\b|quota|resource_exhausted|overloaded|high demand|credit balance is too low",
    re.IGNORECASE,
)
AUTH_PATTERNS = re.compile(
    r"invalid api key|api[_ ]key[_ ]invalid|api key not valid|unauthori[sz]ed|\b401\b|\b403\b|please run /login"
    r"|not logged in|authentication|refresh token|could not be refreshed|invalid auth method|oauth token",
    re.IGNORECASE,
)
PROVIDER_PATTERNS = re.compile(
    r"\b5\d\d\b|internal server error|service unavailable|bad gateway|gateway timeout", re.IGNORECASE
)

UNREACHABLE_PATTERNS = re.compile(
    r"unable to connect to api|connection error|connection refused|econnrefused|econnreset|enotfound|getaddrinfo"
    r"|fetch failed|error sending request|could not resolve host|network is unreachable|etimedout",
    re.IGNORECASE,
)


def classify_message(text: str, status: int | None = None) -> FailureKind:
    """A failure kind from an HTTP status the CLI reported, else from its message."""
    if status in (429, 529):
        return FailureKind.RATE_LIMITED
    if status in (401, 403):
        return FailureKind.AUTH
    if RATE_LIMIT_PATTERNS.search(text):
        return FailureKind.RATE_LIMITED
    if AUTH_PATTERNS.search(text):
        return FailureKind.AUTH
    if (status is not None and 500 <= status < 600) or PROVIDER_PATTERNS.search(text):
        return FailureKind.PROVIDER_ERROR
    if UNREACHABLE_PATTERNS.search(text):
        return FailureKind.UNREACHABLE
    return FailureKind.EXIT_CODE


# Clock-time resets are given to the minute: one that passed moments ago has just happened, not tomorrow's.
RECENTLY_PASSED = timedelta(minutes=5)
_RETRY_IN = re.compile(r"(?:retry in|reset after|retry after|try again in)\s+([\d.]+)\s*(ms|s|sec|seconds?)\b", re.I)
_RESETS_AT_CLOCK = re.compile(r"resets?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*([ap]m)\b(?:\s*\(([^)]+)\))?", re.I)
_RESETS_ON_DATE = re.compile(
    r"resets?\s+(?:on\s+)?([A-Z][a-z]{2,8})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?"
    r"\s*([ap]m)\b(?:\s*\(([^)]+)\))?", re.I,
)
_TRY_AGAIN_AT = re.compile(
    r"try again at\s+(?:([A-Z][a-z]+)\s+(\d{1,2})(?:st|nd|rd|th)?,\s+(\d{4})\s+)?(\d{1,2}):(\d{2})\s*([AP]M)", re.I
)
_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}


def _hour24(hour: int, meridiem: str) -> int:
    hour %= 12
    return hour + 12 if meridiem.lower() == "pm" else hour


def _month(name: str | None) -> int | None:
    return _MONTHS.get(name[:3].lower()) if name else None


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _seconds_until(now: datetime, *, hour: int, minute: int, zone_name: str | None = None,
                   date: tuple[int, int, int] | None = None, year_given: bool = True) -> float:
    """Seconds from `now` to the next `hour:minute` wall-clock time (or on `date`) in the named zone, else the
    box's local zone; DST-correct because both ends are compared as timestamps."""
    zone = _zone(zone_name)
    # Naive wall-clock arithmetic, then localised: the offset in force at the target applies, not today's.
    local_now = now.astimezone(zone).replace(tzinfo=None) if zone else datetime.fromtimestamp(now.timestamp())
    target = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if date is not None:
        target = target.replace(year=date[0], month=date[1], day=date[2])
        if not year_given and target <= local_now - RECENTLY_PASSED:
            target = target.replace(year=target.year + 1)  # "resets Jan 2, 5am" read on Dec 30
    elif target <= local_now - RECENTLY_PASSED:
        target += timedelta(days=1)
    aware = target.replace(tzinfo=zone) if zone else target.astimezone()
    # A reset that has just passed (or is this very minute) gives 0: the scheduler's minimum cooldown applies.
    return max(aware.timestamp() - now.timestamp(), 0.0)


def retry_after_from_text(text: str, *, now: datetime | None = None) -> float | None:
    """Seconds until the reset a CLI names in text ("retry in 34.8s", "resets 11pm (Europe/Lisbon)",
    "resets Dec 9, 5am" (a weekly limit), "try again at 3:28 PM", "try again at Jun 3rd, 2026 4:03 PM"); None
    when it names none; 0 when it has just passed. Clock times are
    the box's local time unless a zone is given; one that passed minutes ago has just happened."""
    now = now or datetime.now(UTC)
    if match := _RETRY_IN.search(text):
        value = float(match.group(1))
        return value / 1000 if match.group(2).lower() == "ms" else value
    if (match := _RESETS_ON_DATE.search(text)) and (month := _month(match.group(1))):
        zone = _zone(match.group(6))
        year = (now.astimezone(zone) if zone else now.astimezone()).year
        with contextlib.suppress(ValueError):  # "Feb 30": no such day, so no reset time
            return _seconds_until(now, hour=_hour24(int(match.group(3)), match.group(5)),
                                  minute=int(match.group(4) or 0), zone_name=match.group(6),
                                  date=(year, month, int(match.group(2))), year_given=False)
    if match := _RESETS_AT_CLOCK.search(text):
        return _seconds_until(now, hour=_hour24(int(match.group(1)), match.group(3)),
                              minute=int(match.group(2) or 0), zone_name=match.group(4))
    if match := _TRY_AGAIN_AT.search(text):
        month_name, day, year, hour, minute, meridiem = match.groups()
        month = _month(month_name)
        date = (int(year), month, int(day)) if month and day and year else None
        return _seconds_until(now, hour=_hour24(int(hour), meridiem), minute=int(minute), date=date)
    return None
