"""Token prices for the CLIs that report tokens but no cost (codex, gemini): the cost they report is estimated.

`DEFAULT_PRICES` are defaults, list prices in USD per million tokens (input, output) as published by the
providers when this table was written; they drift. A caller overrides or extends them with
`ExecutionSpec.prices` (same shape): its table is searched first, then this one. A model is matched by its exact
name, else by the longest key that is a prefix of it ("gpt-5-codex-mini" matches "gpt-5-codex" before "gpt-5").
Cached input tokens are priced as plain input tokens: the estimate errs high. claude reports its own cost
(`total_cost_usd`) and needs no table.
"""

from __future__ import annotations

from executors.base import Prices

DEFAULT_PRICES: Prices = {
    # OpenAI (codex)
    "gpt-5": (1.25, 10.0),
    "gpt-5-codex": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5.1": (1.25, 10.0),
    "gpt-5.1-codex": (1.25, 10.0),
    "gpt-5.1-codex-mini": (0.25, 2.0),
    "gpt-4.1": (2.0, 8.0),
    "o3": (2.0, 8.0),
    "o4-mini": (1.10, 4.40),
    "codex-mini": (1.50, 6.0),
    # Google (gemini)
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-3-pro": (2.0, 12.0),
}


def _lookup(model: str, table: Prices) -> tuple[float, float] | None:
    if model in table:
        return table[model]
    matches = [key for key in table if key and model.startswith(key)]
    return table[max(matches, key=len)] if matches else None


def price_for(model: str, prices: Prices | None = None) -> tuple[float, float] | None:
    """(USD per Mtok in, USD per Mtok out) for `model`: the caller's table first, then the defaults."""
    if not model:
        return None
    return _lookup(model, prices or {}) or _lookup(model, DEFAULT_PRICES)


def estimate_cost(model: str, input_tokens: int, output_tokens: int, prices: Prices | None = None) -> float | None:
    """USD for that many tokens of `model`, or None when no price is known for it."""
    price = price_for(model, prices)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
