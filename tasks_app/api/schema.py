"""OpenAPI postprocessing: document the error responses every operation can give."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "description": "Field name (or `detail`) → list of messages naming the rule that was broken.",
    "additionalProperties": True,
}
ERRORS = {
    "400": "Bad input: the body names each field and the rule it broke. Nothing was changed.",
    "401": "No valid token: send `Authorization: Token <key>` (or `Bearer <key>`).",
    "403": "Authenticated, but not allowed (worker groups are for staff).",
    "404": "No such object in your tenant.",
    "409": "The object's state does not allow this (e.g. cancelling a finished task), or an idempotency conflict.",
    "429": "Too many requests for this token (SCHEDULER_API_THROTTLE_RATE).",
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERRORS.items():
                if code == "400" and method == "delete":
                    continue
                responses.setdefault(code, {
                    "description": description,
                    "content": {"application/json": {"schema": ERROR_SCHEMA}},
                })
    return result
