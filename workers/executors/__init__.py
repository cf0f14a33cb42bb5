"""CLI executors: plain Python (no ORM). Take an ExecutionSpec, run the CLI, return an ExecutionResult."""

from __future__ import annotations

from workers.executors.adapters import ADAPTERS, adapter_for
from workers.executors.base import (
    ConfigurationError,
    Control,
    ExecutionResult,
    ExecutionSpec,
    OutputFile,
)
from workers.executors.runner import execute

__all__ = [
    "ADAPTERS",
    "ConfigurationError",
    "Control",
    "ExecutionResult",
    "ExecutionSpec",
    "OutputFile",
    "adapter_for",
    "execute",
]
