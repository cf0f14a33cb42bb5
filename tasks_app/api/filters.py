from __future__ import annotations

import django_filters

from tasks_app.models import Task, TaskStatus, Tool


class TaskFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=TaskStatus.choices)
    tool = django_filters.ChoiceFilter(choices=Tool.choices)
    worker_group = django_filters.CharFilter(field_name="worker_group__name")
    priority = django_filters.TypedChoiceFilter(choices=[(i, str(i)) for i in range(1, 10)], coerce=int)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    search = django_filters.CharFilter(field_name="prompt", lookup_expr="icontains", max_length=200)
    schedule = django_filters.NumberFilter(field_name="schedule_id", min_value=1, max_value=2**62)

    class Meta:
        model = Task
        fields = ["status", "tool", "worker_group", "priority", "created_after", "created_before", "search", "schedule"]
