"""CLI executors: plain Python, no Django, no Celery. Take an ExecutionSpec, run the CLI, return an ExecutionResult.

Importing this package does not import the runner (`executors.runner.execute`): the web process validates
extra args with the adapters but never starts a CLI.
"""

from __future__ import annotations

from executors.adapters import ADAPTERS, adapter_for
from executors.base import (
    ACCOUNT_FAILURES,
    RETRYABLE_FAILURES,
    ConfigurationError,
    Control,
    EventKind,
    EventSink,
    ExecutionResult,
    ExecutionSpec,
    FailureKind,
    OutputFile,
    RunEvent,
)

__all__ = [
    "ACCOUNT_FAILURES",
    "ADAPTERS",
    "RETRYABLE_FAILURES",
    "ConfigurationError",
    "Control",
    "EventKind",
    "EventSink",
    "ExecutionResult",
    "ExecutionSpec",
    "FailureKind",
    "OutputFile",
    "RunEvent",
    "adapter_for",
]
