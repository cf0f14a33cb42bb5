from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

if TYPE_CHECKING:  # importing these at runtime would be circular: DRF loads this class from its settings
    from rest_framework.request import Request
    from rest_framework.views import APIView


class TokenRateThrottle(SimpleRateThrottle):
    """Requests per API token (SCHEDULER_API_THROTTLE_RATE), so one runaway script cannot starve the rest."""

    scope = "token"

    def get_rate(self) -> str | None:
        return settings.SCHEDULER_API_THROTTLE_RATE or None

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        token = request.auth
        ident = f"token-{token.pk}" if token is not None and hasattr(token, "pk") else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
