"""Failure kinds are one enum, shared by the executors and the domain's model choices."""

from __future__ import annotations

import pytest

from executors import ADAPTERS, RETRYABLE_FAILURES, FailureKind
from executors.classify import classify_message


def test_the_model_choices_are_exactly_the_executors_failure_kinds() -> None:
    from tasks_app.models import TaskRun

    choices = TaskRun._meta.get_field("failure_kind").choices
    assert [value for value, _ in choices] == [kind.value for kind in FailureKind]
    assert set(FailureKind) >= RETRYABLE_FAILURES
    assert {kind.value for kind in RETRYABLE_FAILURES} == {"rate_limited", "provider_error", "worker_lost"}


@pytest.mark.parametrize("text", ["HTTP 429 Too Many Requests", "Invalid API key", "502 Bad Gateway", "boom"])
def test_classification_returns_members_of_the_enum(text: str) -> None:
    assert isinstance(classify_message(text), FailureKind)


@pytest.mark.parametrize("exit_code", [130, 42])
def test_a_gemini_exit_code_alone_is_a_plain_failure_never_a_cancel(exit_code: int) -> None:
    parsed = ADAPTERS["gemini"].parse(stdout=b"", stderr=b"Interrupted\n", exit_code=exit_code)

    assert parsed.failure_kind is FailureKind.EXIT_CODE
