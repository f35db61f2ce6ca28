"""Which models a provider is known to serve, and how many output tokens any request may ask for.

Invariants:
- Checked only for first-party catalogs (OpenAI, Anthropic): a model id that matches no known id
  or prefix (the price table's models, an override's included, and ``known_models`` in
  ``data/prices.json``) is rejected before anything is paid, unless the task allows unknown models
  (a model newer than this package). Other providers (compatible services, Bedrock, Gemini)
  name models too freely to check.
- ``max_tokens`` above the model's known output limit, or above ``MAX_OUTPUT_TOKENS`` for any
  model, is rejected: no model produces that much, so the request is a mistake.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from batch_provider.core.models import LLMRequest, Provider, RejectedRow
from batch_provider.core.pricing import default_price_table

CHECKED_PROVIDERS = frozenset({Provider.OPENAI, Provider.ANTHROPIC})
MAX_OUTPUT_TOKENS = 1_000_000


@cache
def _listed_models(provider: str) -> tuple[str, ...]:
    data = json.loads(resources.files("batch_provider.data").joinpath("prices.json").read_text())
    return tuple(data.get("known_models", {}).get(provider, []))


def known_model_prefixes(provider: str) -> tuple[str, ...]:
    """Priced models (the packaged table and the user's override) and the listed unpriced ones."""
    return tuple(sorted({*default_price_table().models(provider), *_listed_models(provider)}))


def request_problem(
    provider: Provider, request: LLMRequest, *, allow_unknown_models: bool
) -> RejectedRow | None:
    """Why ``request`` must not be sent to ``provider``, or None."""
    model = request.model or (request.native or {}).get("model")
    if provider in CHECKED_PROVIDERS and not allow_unknown_models and isinstance(model, str):
        known = known_model_prefixes(provider.value)
        if not model.startswith(known):
            return RejectedRow(
                row=request.row,
                custom_id=request.custom_id,
                field="model",
                reason=f"model {model!r} is not a known {provider.value} model; check its name, or allow "
                "unknown models on the task if it is newer than this provider package",
            )
    max_tokens = request.max_tokens
    if max_tokens is not None and max_tokens > MAX_OUTPUT_TOKENS:
        return RejectedRow(
            row=request.row,
            custom_id=request.custom_id,
            field="max_tokens",
            reason=f"max_tokens={max_tokens} is over {MAX_OUTPUT_TOKENS}, more than any model can produce; "
            "lower it to what one answer needs",
        )
    return None
