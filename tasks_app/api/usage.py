"""`GET /api/v1/usage/`: runs, tokens and cost per UTC day, per worker group or per tenant. Staff see every tenant;
anyone else only their own tenant's runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app import selectors
from tasks_app.api.serializers import StrictCharField
from tasks_app.api.views import tenant_scope
from tasks_app.presenters import usage_dict, usage_totals

DEFAULT_DAYS = 30
MAX_DAYS = 366
BY_CHOICES = [("group", "group"), ("tenant", "tenant")]


class UsageQuerySerializer(serializers.Serializer):
    since = serializers.DateField(required=False, help_text=f"First UTC day (default: {DEFAULT_DAYS} days ago).")
    until = serializers.DateField(required=False, help_text="Last UTC day, included (default: today).")
    by = serializers.ChoiceField(choices=BY_CHOICES, required=False, default="group",
                                 help_text="One row per day and worker group (default), or per day and tenant.")
    group = StrictCharField(required=False, max_length=100, help_text="Only this worker group's runs.")
    tenant = StrictCharField(required=False, max_length=100, help_text="Only this tenant's runs.")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        until = data.get("until") or timezone.now().date()
        since = data.get("since") or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            raise ValidationError({"since": ["must be on or before until"]})
        if (until - since).days >= MAX_DAYS:
            raise ValidationError({"since": [f"at most {MAX_DAYS} days before until"]})
        return {**data, "since": since, "until": until}


class UsageRowSerializer(serializers.Serializer):
    day = serializers.DateField(help_text="The UTC day the runs started (the daily budgets' day).")
    worker_group = serializers.CharField(allow_null=True, help_text="With by=group (null: runs without a group).")
    tenant = serializers.CharField(allow_null=True, help_text="With by=tenant.")
    runs = serializers.IntegerField(help_text="Runs started that day, in flight ones included.")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField(help_text="Finished runs' cost, and in flight ones' cost so far.")


class UsageTotalsSerializer(serializers.Serializer):
    runs = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField()


class UsageSerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField()
    by = serializers.ChoiceField(choices=BY_CHOICES)
    rows = UsageRowSerializer(many=True)
    totals = UsageTotalsSerializer()


class UsageView(APIView):
    @extend_schema(
        operation_id="usage_list",
        parameters=[UsageQuerySerializer],
        responses=UsageSerializer,
        description="Runs, input and output tokens and cost per UTC day (a run counts on the day it started, as the "
                    "accounts' daily budgets count it; runs in flight with their cost so far), per worker group or "
                    "per tenant (`by`). Staff see every tenant; other users only their own (a `tenant` other than "
                    "theirs gives no rows). Days without runs are left out.",
    )
    def get(self, request: Request) -> Response:
        unknown = sorted(set(request.query_params) - set(UsageQuerySerializer().fields) - {"format"})
        if unknown:
            raise ValidationError({name: ["unknown query parameter"] for name in unknown})
        params = UsageQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = params.validated_data
        scope = tenant_scope(request)
        asked = query.get("tenant")
        rows = [] if scope is not None and asked not in (None, scope) else selectors.usage_per_day(
            since=query["since"], until=query["until"], by=query["by"], tenant=scope if scope is not None else asked,
            group=query.get("group"))
        body = {"since": query["since"], "until": query["until"], "by": query["by"],
                "rows": [usage_dict(row, by=query["by"]) for row in rows], "totals": usage_totals(rows)}
        return Response(UsageSerializer(body).data)
