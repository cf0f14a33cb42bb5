"""The `text/event-stream` media type, so content negotiation admits what every EventSource sends."""

from __future__ import annotations

import json
from typing import Any

from rest_framework.renderers import BaseRenderer


class EventStreamRenderer(BaseRenderer):
    """Accepts `Accept: text/event-stream` for the follow streams (their body is written by tasks_app.streams, not
    by a renderer). Anything rendered through it (an error: 401, 404, 429) goes out as JSON, labelled as such."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: dict[str, Any] | None = None) -> bytes:
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = "application/json"
        return json.dumps(data).encode() if data is not None else b""
