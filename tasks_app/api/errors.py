"""Service errors as JSON naming the field and the rule: 400 for bad input, 403 for a missing permission, 409 for
state conflicts."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

from tasks_app.services.repositories import RepositoryInUse
from tasks_app.services.tasks import IdempotencyConflict, TaskStateError
from tasks_app.transitions import InvalidTransition


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = ValidationError(detail=detail)
    elif isinstance(exc, IdempotencyConflict):
        return Response({"idempotency_key": [str(exc)], "task_id": str(exc.task_id)}, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, DjangoPermissionDenied) and str(exc):  # the service says which permission is missing
        return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    elif isinstance(exc, TaskStateError | InvalidTransition | RepositoryInUse):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return exception_handler(exc, context)
