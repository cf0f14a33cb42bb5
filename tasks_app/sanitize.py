"""What a CLI prints, made storable. PostgreSQL refuses NUL in text and jsonb and lone surrogates anywhere; a
CLI may print both (and invalid UTF-8, which the runner already decodes with U+FFFD). Each is replaced with
U+FFFD, and what was replaced is said, so a run is recorded once, never lost to its own output."""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
MAX_DEPTH = 64  # JSON nested deeper than this is cut (a CLI's result is never that deep)


def storable_text(value: str) -> tuple[str, int]:
    """(the text with NUL and lone surrogates replaced, how many were replaced)."""
    replaced = value.count("\x00")
    text = value.replace("\x00", REPLACEMENT) if replaced else value
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = "".join(REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
        replaced += sum(a != b for a, b in zip(text, cleaned, strict=True))
        text = cleaned
    return text, replaced


def storable_json(value: Any, depth: int = 0) -> tuple[Any, int]:
    """A JSON value with every string (keys too) made storable; (value, how many characters were replaced)."""
    if isinstance(value, str):
        return storable_text(value)
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        return None, 1
    replaced = 0
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key, k = storable_text(str(key))
            out[key], v = storable_json(item, depth + 1)
            replaced += k + v
        return out, replaced
    if isinstance(value, list | tuple):
        items = []
        for item in value:
            item, n = storable_json(item, depth + 1)
            items.append(item)
            replaced += n
        return items, replaced
    return value, 0


class Sanitiser:
    """Collects what was replaced, field by field, for the run's notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def text(self, name: str, value: str) -> str:
        text, replaced = storable_text(value)
        if replaced:
            self.notes.append(f"{name}: {replaced} NUL or invalid character(s) replaced with U+FFFD")
        return text

    def json(self, name: str, value: Any) -> Any:
        cleaned, replaced = storable_json(value)
        if replaced:
            self.notes.append(f"{name}: {replaced} NUL or invalid character(s) replaced with U+FFFD")
        return cleaned
