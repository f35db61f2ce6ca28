"""Prices and model data from the ``genai-prices`` package (pydantic's price database), offline.

Invariants:
- Only the data bundled with the installed package is read: its auto-update (``UpdatePrices``)
  is never started, and a snapshot another library may have installed process-wide is ignored,
  so prices never change mid-run and no network call is made.
- A model is found by exact name only: its id or an ``equals`` / ``starts_with`` clause of its
  match rule, never by the package's fuzzy matching (which takes ``claude-haiku-4.5`` for
  ``claude-haiku-4-5``).
- Rates are read for a date (``at``): standard rates, and batch rates from the package's
  ``processing: batch`` variant when one is in force on that date, else the provider's documented
  50 % batch discount. A tiered price becomes one long-context tier (the first).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from importlib.metadata import version
from typing import Any

from batch_provider.core.models import Provider

GENAI_PROVIDERS = {
    Provider.OPENAI: "openai",
    Provider.ANTHROPIC: "anthropic",
    Provider.GEMINI: "google",
    Provider.VERTEX: "google",
}
"""Our providers priced from genai-prices; Bedrock names come from its ``aws`` entries only.
Vertex serves the same Gemini models at the same prices (and batch rates) as the Gemini API."""
NAME_PROVIDERS = {**GENAI_PROVIDERS, Provider.BEDROCK: "aws"}
BATCH_DISCOUNT = 0.5
_PARTIAL_DATE = re.compile(r"-\d{4}$|[-.@:]$")
_NAME_RULES = {"anthropic": re.compile(r"claude-[a-z0-9-]+")}
"""Names the provider's own API accepts: genai-prices also lists gateway spellings
(``claude-haiku-4.5``, ``claude-sonnet-4@…``) that Anthropic refuses."""


def genai_version() -> str:
    return version("genai-prices")


@cache
def _models(provider_id: str) -> dict[str, Any]:
    """Exact name → ModelInfo for one genai-prices provider (bundled data only)."""
    from genai_prices.data import providers

    index: dict[str, Any] = {}
    for entry in providers:
        if entry.id != provider_id:
            continue
        rule = _NAME_RULES.get(provider_id)
        for model in entry.models:
            for name in (model.id, *_clause_names(model.match)):
                if rule is None or rule.fullmatch(name):
                    index.setdefault(name, model)
    return index


def _clause_names(clause: Any) -> list[str]:
    children = getattr(clause, "or_", None)
    if children is not None:
        return [name for child in children for name in _clause_names(child)]
    name = getattr(clause, "equals", None) or getattr(clause, "starts_with", None)
    return [name] if name and not _PARTIAL_DATE.search(name) else []


@cache
def known_names(provider: Provider) -> frozenset[str]:
    """Exact model names genai-prices lists for ``provider`` (Bedrock: ``vendor.model`` bases too)."""
    provider_id = NAME_PROVIDERS.get(provider)
    if provider_id is None:
        return frozenset()
    names = _models(provider_id)
    if provider is Provider.BEDROCK:
        from batch_provider.core.model_names import bedrock_base

        bases = {bedrock_base(name) for name in names}
        return frozenset(name for name in bases | set(names) if "." in name)
    return frozenset(names)


def find(provider: Provider, name: str) -> Any | None:
    provider_id = GENAI_PROVIDERS.get(provider)
    return _models(provider_id).get(name) if provider_id else None


def context_window(provider: Provider, name: str) -> int | None:
    provider_id = NAME_PROVIDERS.get(provider)
    model = _models(provider_id).get(name) if provider_id else None
    return getattr(model, "context_window", None) if model is not None else None


def _base(value: Any) -> Decimal | None:
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    return Decimal(value.base if isinstance(value, TieredPrices) else value)


def _ratio(part: Decimal | None, whole: Decimal | None, default: float) -> float:
    return float(part / whole) if part is not None and whole else default


def _batch_variant_active(model: Any, at: datetime) -> bool:
    for variant in model.price_variants or ():
        if variant.when.get("processing") != "batch":
            continue
        if variant.constraint is None or variant.constraint.active(at):
            return True
    return False


def row_fields(provider: Provider, name: str, at: datetime | None = None) -> dict[str, Any] | None:
    """The fields of a :class:`~batch_provider.core.pricing.PriceRow` for ``name`` on ``at``."""
    from genai_prices.types import TieredPrices

    model = find(provider, name)
    if model is None:
        return None
    at = at or datetime.now(UTC)
    standard = model.get_prices(at)
    input_rate = _base(standard.input_mtok)
    if input_rate is None:
        return None
    output_rate = _base(standard.output_mtok) or Decimal(0)  # embeddings have no output price
    read, write = _base(standard.cache_read_mtok), _base(standard.cache_write_mtok)
    fields: dict[str, Any] = {
        "provider": provider.value,
        "model": name,
        "input": float(input_rate),
        "output": float(output_rate),
        "cache_read_multiplier": _ratio(read, input_rate, 1.0),
        "cache_write_multiplier": _ratio(write, input_rate, 1.0),
        "batch_discount": BATCH_DISCOUNT,
        "context_window": model.context_window,
        "source": f"genai-prices {genai_version()}",
        "effective_from": at.date().isoformat(),
    }
    if _batch_variant_active(model, at):
        batch = model.get_prices(at, {"processing": "batch"})
        batch_input, batch_read = _base(batch.input_mtok), _base(batch.cache_read_mtok)
        fields["batch_discount"] = _ratio(batch_input, input_rate, BATCH_DISCOUNT)
        if batch_read is not None and read:
            fields["batch_cache_read_discount"] = _ratio(batch_read, read, BATCH_DISCOUNT)
    tiered_input, tiered_output = standard.input_mtok, standard.output_mtok
    if isinstance(tiered_input, TieredPrices) and tiered_input.tiers and input_rate:
        tier = tiered_input.tiers[0]
        output_multiplier = 1.0
        if isinstance(tiered_output, TieredPrices) and tiered_output.tiers:
            output_multiplier = _ratio(Decimal(tiered_output.tiers[0].price), output_rate, 1.0)
        fields["long_context"] = {
            "above_input_tokens": tier.start,
            "input_multiplier": _ratio(Decimal(tier.price), input_rate, 1.0),
            "output_multiplier": output_multiplier,
        }
    return fields
