"""OpenAPI postprocessing: document the error responses every operation can give, and that request bodies take
no field beyond their own (an unknown one is a 400 naming it)."""

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
    "406": "The `Accept` header (or `?format=`) asks for a representation this operation does not serve.",
    "409": "The object's state does not allow this (e.g. cancelling a finished task), or an idempotency conflict.",
    "429": "Too many requests for this token (SCHEDULER_API_THROTTLE_RATE).",
}
BODY_ERRORS = {"415": "The body is not JSON (`Content-Type: application/json`); nothing else is read."}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            errors = {**ERRORS, **BODY_ERRORS} if "requestBody" in operation else ERRORS
            for code, description in errors.items():
                if code == "400" and method == "delete":
                    continue
                responses.setdefault(code, {
                    "description": description,
                    "content": {"application/json": {"schema": ERROR_SCHEMA}},
                })
    return result


def forbid_unknown_fields(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """`additionalProperties: false` on every object a request body holds, nested ones included."""
    components = result.get("components", {}).get("schemas", {})
    pending = [media.get("schema", {}) for path_item in result.get("paths", {}).values()
               for operation in path_item.values() if isinstance(operation, dict)
               for media in operation.get("requestBody", {}).get("content", {}).values()]
    seen: set[str] = set()
    while pending:
        schema = pending.pop()
        if not isinstance(schema, dict):
            continue
        ref = schema.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in seen and name in components:
                seen.add(name)
                pending.append(components[name])
            continue
        if "properties" in schema:
            schema["additionalProperties"] = False
        pending.extend(schema.get("properties", {}).values())
        pending.extend(schema[key] for key in ("items", "additionalProperties") if isinstance(schema.get(key), dict))
        for key in ("allOf", "oneOf", "anyOf"):
            pending.extend(schema.get(key, []))
    return result
