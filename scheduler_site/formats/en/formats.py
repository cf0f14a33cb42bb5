"""English (every `en-*` locale): ISO dates and times with seconds. Django's own ("Jan. 15, 2026, 8 a.m.") drop
the seconds, and an operator reads a task's events, a few of them in the same minute, in the order they happened."""

from __future__ import annotations

DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
