"""`POST /api/v1/intake/`: a sentence → a validated proposal; `"confirm": true` creates it (source `intake`)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app.api.serializers import (
    ScheduleSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
    StrictSerializer,
    TaskDetailSerializer,
)
from tasks_app.models import Schedule, Task, Tool
from tasks_app.services.accounts import user_tenant
from tasks_app.services.intake import (
    KINDS,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_TEXT_CHARS,
    IntakeNotConfigured,
    IntakeUpstreamError,
    Proposal,
    intake_confirm,
    intake_propose,
)


class IntakeProposalSerializer(StrictSerializer):
    """What the model proposed (types only here; the task and schedule rules are the services')."""

    kind = StrictChoiceField(choices=[(k, k) for k in KINDS],
                             help_text="task: one job (now or at run_at); schedule: repeating; none: no job.")
    reason = StrictCharField(required=False, default="", allow_blank=True, max_length=2000,
                             help_text="For kind none: why nothing is proposed. Otherwise how it was understood.")
    name = StrictCharField(required=False, default="", allow_blank=True, max_length=200)
    tool = StrictChoiceField(choices=Tool.choices, required=False, default=None, allow_null=True)
    model = StrictCharField(required=False, default="", allow_blank=True, max_length=120)
    prompt = StrictCharField(required=False, default="", allow_blank=True, trim_whitespace=False)
    output_files = serializers.ListField(child=StrictCharField(trim_whitespace=False, allow_blank=True,
                                                               max_length=1024), required=False, default=list,
                                         max_length=1000)
    priority = StrictIntegerField(required=False, default=5)
    run_at = serializers.DateTimeField(required=False, default=None, allow_null=True,
                                       help_text="Absolute time: when a task runs, or a one-off schedule fires.")
    cron = StrictCharField(required=False, default="", allow_blank=True, max_length=120)
    timezone = StrictCharField(required=False, default="", allow_blank=True, max_length=64,
                               help_text="IANA timezone of `cron`.")
    interval_seconds = StrictIntegerField(required=False, default=None, allow_null=True)
    keywords = serializers.ListField(child=StrictCharField(max_length=MAX_KEYWORD_CHARS), required=False,
                                     default=list, max_length=MAX_KEYWORDS)
    worker_group = StrictCharField(required=False, default=None, allow_null=True, max_length=100)


class IntakeRequestSerializer(StrictSerializer):
    text = StrictCharField(required=False, default="", allow_blank=True, trim_whitespace=False,
                           max_length=MAX_TEXT_CHARS, help_text="What to run, in plain words.")
    timezone = StrictCharField(required=False, default="UTC", max_length=64,
                               help_text="The user's IANA timezone: relative times are read in it.")
    confirm = StrictBooleanField(required=False, default=False, help_text="Create what is proposed.")
    proposal = IntakeProposalSerializer(required=False, default=None, allow_null=True,
                                        help_text="A proposal from an earlier call, to validate or confirm "
                                                  "without asking the model again.")

    def to_proposal(self) -> Proposal | None:
        data = self.validated_data.get("proposal")
        if data is None:
            return None
        return Proposal(**{**data, "cron": data["cron"] or "", "timezone": data["timezone"] or "",
                           "output_files": list(data["output_files"]), "keywords": list(data["keywords"])})


class IntakeResponseSerializer(serializers.Serializer):
    proposal = IntakeProposalSerializer()
    created = serializers.BooleanField(help_text="Whether a task or schedule was created by this call.")
    task = TaskDetailSerializer(allow_null=True, help_text="The created task (kind task, confirmed).")
    schedule = ScheduleSerializer(allow_null=True, help_text="The created schedule (kind schedule, confirmed).")


class IntakeErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class IntakeView(APIView):
    @extend_schema(
        operation_id="intake_create",
        request=IntakeRequestSerializer,
        responses={
            200: IntakeResponseSerializer,
            201: IntakeResponseSerializer,
            502: OpenApiResponse(IntakeErrorSerializer, description="The model endpoint failed, timed out or gave "
                                                                    "an answer that is not a proposal. Nothing was "
                                                                    "created."),
            503: OpenApiResponse(IntakeErrorSerializer, description="Intake is not configured (no OPENAI_API_KEY)."),
        },
        examples=[OpenApiExample("schedule", request_only=True, value={
            "text": "every weekday at 5pm Shanghai time, have codex summarise new issues in the docs folder",
            "timezone": "Asia/Shanghai", "confirm": False})],
        description="Natural language → a proposed task or schedule, validated by the same rules as "
                    "`POST /tasks/` and `POST /schedules/` (400 naming the field otherwise). 200 with the proposal; "
                    "with `confirm: true` it is created (source `intake`) and the answer is 201. Kind `none` "
                    "creates nothing. Send `proposal` back (with `confirm`) to create it without asking again.",
    )
    def post(self, request: Request) -> Response:
        serializer = IntakeRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            result = intake_propose(text=data["text"], zone_name=data["timezone"], proposal=serializer.to_proposal())
        except IntakeNotConfigured as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        except IntakeUpstreamError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        created = None
        if data["confirm"]:
            created = intake_confirm(result=result, tenant=user_tenant(request.user),
                                     created_by=request.user.get_username())
        body: dict[str, Any] = {
            "proposal": result.proposal.as_dict(),
            "created": created is not None,
            "task": TaskDetailSerializer(created).data if isinstance(created, Task) else None,
            "schedule": ScheduleSerializer(created).data if isinstance(created, Schedule) else None,
        }
        return Response(body, status=status.HTTP_201_CREATED if created is not None else status.HTTP_200_OK)
