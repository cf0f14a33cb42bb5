from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField

from tasks_app.models import Task, TaskStatus, Tool


class UtcIsoDateTimeField(IsoDateTimeField):
    """Read in UTC: Python takes offsets up to ±23:59, PostgreSQL refuses beyond ±15:59 (a 500 otherwise)."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("is out of range once read in UTC", code="invalid") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class TaskFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=TaskStatus.choices)
    tool = django_filters.ChoiceFilter(choices=Tool.choices)
    worker_group = django_filters.CharFilter(field_name="worker_group__name")
    priority = django_filters.TypedChoiceFilter(choices=[(i, str(i)) for i in range(1, 10)], coerce=int)
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    search = django_filters.CharFilter(field_name="prompt", lookup_expr="icontains", max_length=200)
    schedule = django_filters.NumberFilter(field_name="schedule_id", min_value=1, max_value=2**62)

    class Meta:
        model = Task
        fields = ["status", "tool", "worker_group", "priority", "created_after", "created_before", "search", "schedule"]
