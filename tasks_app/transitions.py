"""The task lifecycle (SPEC §3) as one table. `task_transition` is the only writer of Task.status."""

from __future__ import annotations

from tasks_app.models import TaskStatus

Q, L, R = TaskStatus.QUEUED, TaskStatus.LEASED, TaskStatus.RUNNING
S, F, C = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "": frozenset({Q}),  # creation
    Q: frozenset({L, C}),
    L: frozenset({R, Q, C}),  # run starts; lease expired before start; canceled
    R: frozenset({S, F, C, Q}),  # Q: retry with backoff
    S: frozenset(),
    F: frozenset({Q}),  # explicit retry
    C: frozenset({Q}),  # explicit retry
}


class InvalidTransition(Exception):
    def __init__(self, from_status: str, to_status: str) -> None:
        self.from_status, self.to_status = from_status, to_status
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS.get(from_status, ()))) or "none (terminal)"
        super().__init__(
            f"cannot move a task from {from_status or 'nothing'!s} to {to_status}; allowed from "
            f"{from_status or 'nothing'}: {allowed}"
        )


def check_transition(from_status: str, to_status: str) -> None:
    if to_status not in ALLOWED_TRANSITIONS.get(from_status, frozenset()):
        raise InvalidTransition(from_status, to_status)
