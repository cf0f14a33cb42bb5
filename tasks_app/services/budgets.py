"""Account budgets (SPEC §8): each dispatch pass reads what every budgeted group spent in the current UTC day and
month, leases nothing to a group that has reached a budget, and records the warning at
SCHEDULER_BUDGET_WARN_FRACTION (and the budget being reached) once per group per window.

Why an AuditEvent for the warning: it is durable (a log line goes with the control worker's log, and would repeat
on every pass), it is shown where operators already read what happened to a group's configuration
(`GET /api/v1/audit/?action=budget_warning`, the admin's Audit events), it is staff-only like the budgets, and it is
its own record of "already warned": one indexed query finds this window's row, so a warning is written once per
window however many passes see the spend above the threshold. A TaskEvent would not fit: it belongs to one task.
Each is also logged as a warning, for log-based alerting.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.conf import settings

from tasks_app.audit import acting, audit
from tasks_app.budgets import BUDGET_FIELDS, GroupSpend, month_window, window
from tasks_app.models import AuditEvent, EventSource, TaskRun, WorkerGroup

logger = logging.getLogger(__name__)

BUDGET_WARNING = "budget_warning"
BUDGET_REACHED = "budget_reached"
_KIND_OF_FIELD = {field: kind for kind, field in BUDGET_FIELDS.items()}


def budgets_check(*, groups: list[WorkerGroup], now: datetime) -> None:
    """Set `spend` on every group of `groups` that has a budget (one grouped query; none if no group has one), and
    record, once per group and window, that its spend reached SCHEDULER_BUDGET_WARN_FRACTION of a budget
    (`budget_warning`) and the budget itself (`budget_reached`). Called inside the dispatch pass's transaction and
    under its lock, so two passes never both record the same crossing."""
    budgeted = [group for group in groups if any(group.budget(kind) is not None for kind in BUDGET_FIELDS)]
    spent = TaskRun.objects.spend_by_group(group_ids=[group.pk for group in budgeted], now=now)
    for group in budgeted:
        group.spend = spent.get(group.pk, GroupSpend())
    warn_fraction = Decimal(str(settings.SCHEDULER_BUDGET_WARN_FRACTION))
    crossed = [
        (group, kind, action)
        for group in budgeted for kind in BUDGET_FIELDS if (budget := group.budget(kind)) is not None
        for action, threshold in ((BUDGET_WARNING, budget * warn_fraction), (BUDGET_REACHED, budget))
        if group.spend.of(kind) >= threshold
    ]
    if not crossed:
        return
    recorded = _recorded(names={group.name for group, _, _ in crossed}, now=now)
    with acting(EventSource.SYSTEM, "dispatcher"):
        for group, kind, action in crossed:
            if (group.name, kind, action) in recorded:
                continue
            audit(action, "worker_group", group.name, [BUDGET_FIELDS[kind]], at=now)
            _log(group, kind, action, now=now)


def _recorded(*, names: set[str], now: datetime) -> set[tuple[str, str, str]]:
    """(group, window kind, action) already recorded in the window that holds `now` (a month holds its days)."""
    month = month_window(now)
    rows = (AuditEvent.objects.filter(object_type="worker_group", object_id__in=sorted(names),
                                      action__in=(BUDGET_WARNING, BUDGET_REACHED),
                                      created_at__gte=month.start, created_at__lt=month.end)
            .values_list("object_id", "action", "changed", "created_at"))
    return {(name, kind, action) for name, action, changed, created_at in rows
            for kind in (_KIND_OF_FIELD[field] for field in changed if field in _KIND_OF_FIELD)
            if created_at in window(kind, now)}


def _log(group: WorkerGroup, kind: str, action: str, *, now: datetime) -> None:
    budget, spent = group.budget(kind), group.spend.of(kind)
    ends = window(kind, now).end
    if action == BUDGET_REACHED:
        logger.warning("group %s reached its %s budget ($%s spent of $%s): it takes no new work until %s UTC",
                       group.name, kind, f"{spent:.2f}", budget, f"{ends:%Y-%m-%d %H:%M}")
    else:
        logger.warning("group %s has spent $%s of its %s budget of $%s (%s%%; warning at %s%%)", group.name,
                       f"{spent:.2f}", kind, budget, f"{100 * spent / budget:.0f}" if budget else "100",
                       f"{100 * settings.SCHEDULER_BUDGET_WARN_FRACTION:.0f}")
