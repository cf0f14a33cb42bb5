"""Failure classification and reset-time parsing from the CLIs' error texts (see shared CLI_FACTS.md)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


def classify_message(text: str, status: int | None = None) -> str:
    """A failure kind from an HTTP status the CLI reported, else from its message."""
    if status in (429, 529):
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if RATE_LIMIT_PATTERNS.search(text):
        return "rate_limited"
    if AUTH_PATTERNS.search(text):
        return "auth"
    if (status is not None and 500 <= status < 600) or PROVIDER_PATTERNS.search(text):
        return "provider_error"
    return "exit_code"


# Clock-time resets are given to the minute: one that passed moments ago has just happened, not tomorrow's.
RECENTLY_PASSED = timedelta(minutes=5)
_RETRY_IN = re.compile(r"(?:retry in|reset after|retry after|try again in)\s+([\d.]+)\s*(ms|s|sec|seconds?)\b", re.I)
_RESETS_AT_CLOCK = re.compile(r"resets?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*([ap]m)\b(?:\s*\(([^)]+)\))?", re.I)
_TRY_AGAIN_AT = re.compile(
    r"try again at\s+(?:([A-Z][a-z]+)\s+(\d{1,2})(?:st|nd|rd|th)?,\s+(\d{4})\s+)?(\d{1,2}):(\d{2})\s*([AP]M)", re.I
)
_MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"], start=1)}


def _hour24(hour: int, meridiem: str) -> int:
    hour %= 12
    return hour + 12 if meridiem.lower() == "pm" else hour


def _zone(name: str | None) -> timezone | ZoneInfo:
    if name:
        try:
            return ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError):
            pass
    local = datetime.now().astimezone().tzinfo
    return local if isinstance(local, timezone | ZoneInfo) else UTC


def retry_after_from_text(text: str, *, now: datetime | None = None) -> float | None:
    """Seconds until the reset a CLI names in text ("retry in 34.8s", "resets 11pm (Europe/Lisbon)",
    "try again at 3:28 PM"); None when it names none. Clock times are the box's local time unless a zone
    is given, and a time already past today means tomorrow."""
    now = now or datetime.now(UTC)
    if match := _RETRY_IN.search(text):
        value = float(match.group(1))
        return value / 1000 if match.group(2).lower() == "ms" else value
    if match := _RESETS_AT_CLOCK.search(text):
        zone = _zone(match.group(4))
        local_now = now.astimezone(zone)
        target = local_now.replace(
            hour=_hour24(int(match.group(1)), match.group(3)), minute=int(match.group(2) or 0), second=0,
            microsecond=0,
        )
        if target <= local_now - RECENTLY_PASSED:
            target += timedelta(days=1)
        return max((target - local_now).total_seconds(), 0.0)
    if match := _TRY_AGAIN_AT.search(text):
        month_name, day, year, hour, minute, meridiem = match.groups()
        zone = _zone(None)
        local_now = now.astimezone(zone)
        target = local_now.replace(hour=_hour24(int(hour), meridiem), minute=int(minute), second=0, microsecond=0)
        if month_name and month_name.lower() in _MONTHS:
            target = target.replace(year=int(year), month=_MONTHS[month_name.lower()], day=int(day))
        elif target <= local_now - RECENTLY_PASSED:
            target += timedelta(days=1)
        return max((target - local_now).total_seconds(), 0.0)
    return None
