"""Failure kinds and reset times from the CLIs' own texts (messages quoted in shared CLI_FACTS.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from executors.classify import classify_message, retry_after_from_text


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- retry_after_from_text: relative delays ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("Please retry in 34.89s.", 34.89),
    ("Your quota will reset after 5s.", 5.0),
    ("You exceeded your current quota, please check your plan and billing details. Please retry in 120s.", 120.0),
    ("Please retry in 718.5ms.", 0.7185),
    ("Rate limited: try again in 30 seconds", 30.0),
    ("retry after 2 sec", 2.0),
])
def test_relative_delays_are_read_as_seconds(text: str, seconds: float) -> None:
    assert retry_after_from_text(text, now=_utc(2026, 1, 15, 12, 0)) == seconds


@pytest.mark.parametrize("text", [
    "",
    "Something went wrong",
    "API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later.",
    '[API Error: {"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).",'
    '"status":"RESOURCE_EXHAUSTED"}}]',
    "exceeded retry limit, last status: 429 Too Many Requests, request id: abc",
    "Quota exceeded. Check your plan and billing details.",
])
def test_texts_without_a_time_give_none(text: str) -> None:
    assert retry_after_from_text(text, now=_utc(2026, 1, 15, 12, 0)) is None


# -- retry_after_from_text: claude's "resets <clock> (<zone>)" ---------------------------------------------


@pytest.mark.parametrize(("text", "now", "seconds"), [
    # Asia/Nicosia is UTC+2 in January
    ("You've hit your session limit · resets 11pm (Asia/Nicosia)", _utc(2026, 1, 15, 20, 0), 3600.0),
    ("You've hit your session limit · resets 11pm (Asia/Nicosia)", _utc(2026, 1, 15, 21, 30), 84600.0),
    ("You've hit your session limit · resets 11:20pm (Asia/Nicosia)", _utc(2026, 1, 15, 20, 0), 4800.0),
    ("You've hit your limit · resets 1pm (Europe/Lisbon)", _utc(2026, 1, 15, 12, 30), 1800.0),
    ("You've hit your session limit · resets 12am (UTC)", _utc(2026, 1, 15, 23, 0), 3600.0),
    ("You've hit your session limit · resets 12pm (UTC)", _utc(2026, 1, 15, 11, 0), 3600.0),
    # a clock time that passed moments ago has just happened; one well past means tomorrow
    ("You've hit your session limit · resets 11pm (UTC)", _utc(2026, 1, 15, 23, 0), 0.0),
    ("You've hit your session limit · resets 11pm (UTC)", _utc(2026, 1, 15, 23, 3), 0.0),
    ("You've hit your session limit · resets 11pm (UTC)", _utc(2026, 1, 15, 23, 10), 85800.0),
])
def test_claude_reset_clock_in_a_named_zone(text: str, now: datetime, seconds: float) -> None:
    assert retry_after_from_text(text, now=now) == seconds


@pytest.mark.parametrize(("text", "seconds"), [
    ("Weekly limit reached ∙ resets 5am", 3600.0),
    ("You've hit your session limit · resets 5am (Mars/Olympus_Mons)", 3600.0),  # unknown zone: the box's
])
def test_claude_reset_clock_without_a_known_zone_uses_the_box_zone(text: str, seconds: float,
                                                                   local_zone: Callable[[str], None]) -> None:
    local_zone("Asia/Tokyo")  # UTC+9, no DST

    assert retry_after_from_text(text, now=_utc(2026, 1, 15, 19, 0)) == seconds  # 04:00 JST


def test_claude_reset_clock_across_a_dst_change_counts_real_seconds() -> None:
    # Cyprus moves to UTC+3 at 03:00 on 2026-03-29: 23:30 EET to 23:00 EEST next day is 22.5 h, not 23.5 h.
    now = _utc(2026, 3, 28, 21, 30)

    seconds = retry_after_from_text("You've hit your session limit · resets 11pm (Asia/Nicosia)", now=now)

    assert seconds == (_utc(2026, 3, 29, 20, 0) - now).total_seconds() == 81000.0


# -- retry_after_from_text: codex's "try again at <clock>" in the box's local time -------------------------


@pytest.mark.parametrize(("text", "now", "seconds"), [
    ("You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
     "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at 3:28 PM.",
     _utc(2026, 1, 15, 3, 0), 12480.0),  # 12:00 JST → 15:28 JST
    ("try again at 3:28 PM.", _utc(2026, 1, 15, 7, 0), 84480.0),  # 16:00 JST: tomorrow
    ("try again at 3:28 PM.", _utc(2026, 1, 15, 6, 30), 0.0),  # 15:30 JST: it has just reset
    ("try again at 12:05 AM.", _utc(2026, 1, 15, 14, 55), 600.0),  # 23:55 JST → 00:05 JST
    ("try again at May 20th, 2026 4:03 PM.", _utc(2026, 1, 15, 3, 0),
     (_utc(2026, 5, 20, 7, 3) - _utc(2026, 1, 15, 3, 0)).total_seconds()),
    ("try again at March 1st, 2026 9:00 AM.", _utc(2026, 1, 15, 3, 0),
     (_utc(2026, 3, 1, 0, 0) - _utc(2026, 1, 15, 3, 0)).total_seconds()),
    ("try again at May 20th, 2025 4:03 PM.", _utc(2026, 1, 15, 3, 0), 0.0),  # already past
])
def test_codex_try_again_at_is_read_in_the_box_zone(text: str, now: datetime, seconds: float,
                                                    local_zone: Callable[[str], None]) -> None:
    local_zone("Asia/Tokyo")

    assert retry_after_from_text(text, now=now) == seconds


def test_codex_try_again_at_with_an_abbreviated_month(local_zone: Callable[[str], None]) -> None:
    local_zone("Asia/Tokyo")
    now = _utc(2026, 1, 15, 3, 0)

    seconds = retry_after_from_text("try again at Jun 3rd, 2026 4:03 PM.", now=now)

    assert seconds == (_utc(2026, 6, 3, 7, 3) - now).total_seconds()


def test_codex_try_again_at_uses_the_dst_offset_in_force_at_that_time(local_zone: Callable[[str], None]) -> None:
    local_zone("Europe/Lisbon")
    # Pick a `now` in the other half of the year from the real clock, so the offsets differ either way.
    summer_now = time.localtime().tm_isdst > 0
    now, expected = ((_utc(2026, 1, 15, 10, 0), 19680.0) if summer_now  # WET: 10:00 → 15:28
                     else (_utc(2026, 7, 15, 10, 0), 16080.0))  # WEST: 11:00 → 15:28

    assert retry_after_from_text("try again at 3:28 PM.", now=now) == expected


# -- classify_message ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), [
    # claude
    ("You've hit your session limit · resets 11pm (Asia/Nicosia)", "rate_limited"),
    ("Weekly limit reached ∙ resets 5am", "rate_limited"),
    ("You've hit your limit · resets 1pm (Europe/Lisbon)", "rate_limited"),
    ('API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}',
     "rate_limited"),
    ("API Error: Request rejected (429) · This request would exceed your account's rate limit. "
     "Please try again later.", "rate_limited"),
    ('API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
     "rate_limited"),
    ("Credit balance is too low", "rate_limited"),
    ("Invalid API key · Please run /login", "auth"),
    ('API Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal server error"}}',
     "provider_error"),
    # codex
    ("You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
     "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at 3:28 PM.", "rate_limited"),
    ("exceeded retry limit, last status: 429 Too Many Requests, request id: abc", "rate_limited"),
    ("Quota exceeded. Check your plan and billing details.", "rate_limited"),
    ("We're currently experiencing high demand, which may cause temporary errors.", "rate_limited"),
    ("exceeded retry limit, last status: 401 Unauthorized, request id: abc", "auth"),
    ("Your access token could not be refreshed because your refresh token was already used.", "auth"),
    ("exceeded retry limit, last status: 500 Internal Server Error, request id: abc", "provider_error"),
    ("exceeded retry limit, last status: 503 Service Unavailable, request id: abc", "provider_error"),
    ("Reconnecting... 2/5", "exit_code"),
    # gemini
    ("TerminalQuotaError: You exceeded your current quota, please check your plan and billing details.",
     "rate_limited"),
    ('[API Error: {"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).",'
     '"status":"RESOURCE_EXHAUSTED"}}]', "rate_limited"),
    ('[API Error: {"error":{"code":503,"message":"The model is overloaded. Please try again later.",'
     '"status":"UNAVAILABLE"}}]', "rate_limited"),
    ('[API Error: {"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",'
     '"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}]', "auth"),
    ("Invalid auth method selected.", "auth"),
    ('[API Error: {"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}]',
     "provider_error"),
    ("An unexpected critical error occurred:[object Object]", "exit_code"),
    ("", "exit_code"),
])
def test_classify_message_from_real_cli_texts(text: str, kind: str) -> None:
    assert classify_message(text) == kind


@pytest.mark.parametrize(("status", "kind"), [
    (429, "rate_limited"), (529, "rate_limited"), (401, "auth"), (403, "auth"),
    (500, "provider_error"), (502, "provider_error"), (503, "provider_error"), (400, "exit_code"), (None, "exit_code"),
])
def test_an_http_status_classifies_a_message_that_says_nothing(status: int | None, kind: str) -> None:
    assert classify_message("request failed", status) == kind


def test_a_rate_limit_status_wins_over_an_auth_sounding_text() -> None:
    assert classify_message("Invalid API key · Please run /login", 429) == "rate_limited"
    assert classify_message("You've hit your session limit", 401) == "auth"


@pytest.mark.parametrize(("text", "now", "seconds"), [
    ("You've hit your weekly limit · resets Dec 9, 5am (Europe/Berlin)", _utc(2026, 12, 2, 4, 0),
     (_utc(2026, 12, 9, 4, 0) - _utc(2026, 12, 2, 4, 0)).total_seconds()),
    ("Weekly limit reached ∙ resets Jan 2 at 5:30pm (UTC)", _utc(2026, 12, 30, 12, 0),  # next year's January
     (_utc(2027, 1, 2, 17, 30) - _utc(2026, 12, 30, 12, 0)).total_seconds()),
    ("You've hit your weekly limit · resets Dec 9, 5am (UTC)", _utc(2026, 12, 9, 5, 0, 40), 0.0),  # this minute
    ("You've hit your weekly limit · resets Feb 30, 5am (UTC)", _utc(2026, 2, 1, 0, 0), None),  # no such day
])
def test_claude_weekly_reset_on_a_date(text: str, now: datetime, seconds: float | None) -> None:
    assert retry_after_from_text(text, now=now) == seconds


@pytest.mark.parametrize("text", [
    "API Error: Unable to connect to API (ConnectionRefused)",
    "error sending request for url (https://api.openai.com/v1/responses)",
    "TypeError: fetch failed",
    "getaddrinfo ENOTFOUND generativelanguage.googleapis.com",
])
def test_a_cli_that_cannot_reach_its_api_is_an_account_problem(text: str) -> None:
    assert classify_message(text) == "unreachable"
