"""Which models a provider is known to serve, and what one request may ask of a model.

Invariants:
- A model id is known when one of its names under the provider's snapshot rule
  (:func:`~batch_provider.core.model_names.name_candidates`) is an exact known name: the models
  of the bundled genai-prices data (OpenAI, Anthropic, Gemini, and its AWS entries for Bedrock),
  the rows of the price table (an override's included) and ``known_models`` in
  ``data/prices.json``. Nothing matches by prefix: ``gpt-4o-mnii`` is unknown, and the reject
  suggests the closest known names. Unknown models are rejected before anything is paid, unless
  the task allows unknown models (a model newer than this package). OpenAI-compatible services
  name models freely and are not checked, nor are Bedrock ARNs that name no model.
- ``max_tokens`` above ``MAX_OUTPUT_TOKENS`` is rejected: no model produces that much.
- A request whose estimated input tokens exceed the model's context window (from the model data)
  is rejected with both figures; the provider would refuse it after the batch was paid for.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources

from batch_provider.core import genai_source
from batch_provider.core.model_names import closest, name_candidates, opaque_model_id
from batch_provider.core.models import LLMRequest, Provider, RejectedRow
from batch_provider.core.pricing import PriceTable, default_price_table

CHECKED_PROVIDERS = frozenset(
    {Provider.OPENAI, Provider.ANTHROPIC, Provider.GEMINI, Provider.VERTEX, Provider.BEDROCK}
)
MAX_OUTPUT_TOKENS = 1_000_000


@cache
def _listed_models(provider: str) -> tuple[str, ...]:
    data = json.loads(resources.files("batch_provider.data").joinpath("prices.json").read_text())
    return tuple(data.get("known_models", {}).get(provider, []))


def known_models(provider: Provider | str, prices: PriceTable | None = None) -> frozenset[str]:
    """Exact names a provider is known to serve (see the module's invariants)."""
    provider = Provider(provider)
    table = prices or default_price_table()
    return frozenset(
        {*genai_source.known_names(provider), *table.models(provider.value), *_listed_models(provider.value)}
    )


def known_model_prefixes(provider: str) -> tuple[str, ...]:
    """Kept for callers of the former prefix check: the known names, sorted."""
    return tuple(sorted(known_models(provider)))


def is_known_model(provider: Provider, model: str, prices: PriceTable | None = None) -> bool:
    return _is_known(provider, model, prices or default_price_table())


@lru_cache(maxsize=1024)
def _is_known(provider: Provider, model: str, prices: PriceTable) -> bool:
    if provider not in CHECKED_PROVIDERS or opaque_model_id(provider, model):
        return True
    genai = genai_source.known_names(provider)
    listed = _listed_models(provider.value)
    ours = prices.models(provider.value)
    return any(name in genai or name in listed or name in ours for name in name_candidates(provider, model))


def unknown_model_reason(provider: Provider, model: str, prices: PriceTable | None = None) -> str:
    """Why ``model`` is refused, with the closest known names when there are some."""
    known = known_models(provider, prices)
    name = name_candidates(provider, model)[0]
    guesses = closest(name, known)
    hint = f"did you mean {' or '.join(repr(g) for g in guesses)}? " if guesses else ""
    return (
        f"model {model!r} is not a known {provider.value} model; {hint}Check its name, or set "
        "allow_unknown_models=True on the task if it is newer than this provider package "
        "(give it a price too if the task sets max_cost_usd)"
    )


def request_problem(
    provider: Provider, request: LLMRequest, *, allow_unknown_models: bool, prices: PriceTable | None = None
) -> RejectedRow | None:
    """Why ``request`` must not be sent to ``provider``, or None."""
    model = request.model or (request.native or {}).get("model")
    if not allow_unknown_models and isinstance(model, str) and not is_known_model(provider, model, prices):
        return RejectedRow(
            row=request.row,
            custom_id=request.custom_id,
            field="model",
            reason=unknown_model_reason(provider, model, prices),
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


def context_problem(
    provider: Provider, request: LLMRequest, input_tokens: int, prices: PriceTable
) -> RejectedRow | None:
    """A reject when ``input_tokens`` is over the model's context window, else None."""
    model = request.model or (request.native or {}).get("model")
    window = prices.context_window(provider.value, model) if isinstance(model, str) else None
    if window is None or input_tokens <= window:
        return None
    return RejectedRow(
        row=request.row,
        custom_id=request.custom_id,
        field="input",
        reason=f"the request carries about {input_tokens:,} input tokens, over the {window:,}-token "
        f"context window of {model}; shorten or split this row's text, or use a model with a larger "
        "context window",
    )
