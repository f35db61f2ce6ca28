"""Price table and cost arithmetic: what a run cost at batch prices and what it would have cost
synchronously.

Invariants:
- Prices are in USD per million tokens at standard (synchronous) rates; batch rates are standard ×
  ``batch_discount`` (cache reads × ``batch_cache_read_discount`` when the provider bills them
  apart). Sources, first match wins: the user's override file (``$BATCH_PROVIDER_PRICE_TABLE`` or
  ``prices_path``), then the bundled ``genai-prices`` data for OpenAI, Anthropic and Gemini
  (:mod:`batch_provider.core.genai_source`, offline), then our own rows
  (``batch_provider/data/prices.json``: Bedrock, and models genai-prices lacks).
- A model is matched by exact name only, trying the id and then its base under the provider's
  snapshot rule (:func:`~batch_provider.core.model_names.name_candidates`): ``gpt-6-luna-2026-09-22``
  is ``gpt-6-luna``, ``us.anthropic.claude-haiku-4-5-20251001-v1:0`` is
  ``anthropic.claude-haiku-4-5``; ``gpt-4o-mnii`` is nothing.
- An unknown model has an unknown cost (``None``), never a guessed one.
- Every :class:`Cost` names the source (and version) of each price it used, by model.
- ``Usage.input_tokens`` excludes cache reads and writes, which are priced on their own.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field

from batch_provider.core import genai_source
from batch_provider.core.model_names import name_candidates
from batch_provider.core.models import Provider, Usage

MILLION = 1_000_000


class LongContextTier(BaseModel):
    above_input_tokens: int
    input_multiplier: float
    output_multiplier: float


class PriceRow(BaseModel):
    provider: str
    model: str
    input: float
    output: float
    cache_read: float | None = None
    cache_read_multiplier: float = 0.5
    cache_write_multiplier: float = 1.0
    cache_write: float | None = None
    batch_discount: float = 0.5
    batch_cache_read_discount: float | None = None
    """Batch price of a cache read ÷ its standard price, when not ``batch_discount``."""
    long_context: LongContextTier | None = None
    context_window: int | None = None
    """Most input tokens one request may carry, when known."""
    effective_from: str | None = None
    source: str | None = None

    def is_long(self, input_tokens_in_request: int) -> bool:
        """Whether a request of this many prompt tokens is priced at the long-context tier."""
        tier = self.long_context
        return tier is not None and input_tokens_in_request > tier.above_input_tokens

    def rates(self, input_tokens_in_request: int) -> tuple[float, float, float, float]:
        """Standard (input, output, cache read, cache write) rates for one request's size."""
        return self._rates(self.is_long(input_tokens_in_request))

    def _rates(self, long: bool) -> tuple[float, float, float, float]:
        tier = self.long_context
        input_rate = self.input * (tier.input_multiplier if long and tier else 1.0)
        output_rate = self.output * (tier.output_multiplier if long and tier else 1.0)
        read = self.cache_read if self.cache_read is not None else input_rate * self.cache_read_multiplier
        write = self.cache_write if self.cache_write is not None else input_rate * self.cache_write_multiplier
        return input_rate, output_rate, read, write

    def priced(self, usage: Usage, *, long: bool) -> Cost:
        """Cost of ``usage`` at this row's standard and batch prices, at the given tier."""
        input_rate, output_rate, read_rate, write_rate = self._rates(long)
        uncached = (
            usage.input_tokens * input_rate
            + usage.output_tokens * output_rate
            + usage.cache_write_tokens * write_rate
        ) / MILLION
        reads = usage.cache_read_tokens * read_rate / MILLION
        read_discount = self.batch_cache_read_discount
        if read_discount is None:
            read_discount = self.batch_discount
        return Cost(
            batch_usd=uncached * self.batch_discount + reads * read_discount,
            standard_usd=uncached + reads,
            price_sources={self.model: self.source or "batch_provider price table"},
        )


class Cost(BaseModel):
    """Dollars for some usage: at batch prices, at synchronous prices, and the difference."""

    batch_usd: float = 0.0
    standard_usd: float = 0.0
    unpriced_tokens: int = 0
    """Tokens of models the table does not know: not included in the dollar figures."""
    unpriced_models: list[str] = Field(default_factory=list)
    price_sources: dict[str, str] = Field(default_factory=dict)
    """Priced model name → where its price came from (``genai-prices 0.2.3``, a file …)."""

    @property
    def savings_usd(self) -> float:
        return self.standard_usd - self.batch_usd

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            batch_usd=self.batch_usd + other.batch_usd,
            standard_usd=self.standard_usd + other.standard_usd,
            unpriced_tokens=self.unpriced_tokens + other.unpriced_tokens,
            unpriced_models=sorted(set(self.unpriced_models) | set(other.unpriced_models)),
            price_sources={**self.price_sources, **other.price_sources},
        )

    def summary(self) -> dict[str, Any]:
        return {
            "batch_usd": round(self.batch_usd, 6),
            "standard_usd": round(self.standard_usd, 6),
            "savings_usd": round(self.savings_usd, 6),
            "unpriced_tokens": self.unpriced_tokens,
            "unpriced_models": self.unpriced_models,
            "price_sources": self.price_sources,
        }


class PriceTable:
    """Our rows, the user's overrides (which win) and genai-prices in between, read for a date."""

    def __init__(
        self, rows: list[PriceRow], *, overrides: list[PriceRow] | None = None, at: datetime | None = None
    ):
        self._rows: dict[tuple[str, str], PriceRow] = {(r.provider, r.model): r for r in rows}
        self._overrides: dict[tuple[str, str], PriceRow] = {(r.provider, r.model): r for r in overrides or []}
        self.at = at
        self._found: dict[tuple[str, str], PriceRow | None] = {}
        self._windows: dict[tuple[str, str], int | None] = {}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str | None = None) -> PriceTable:
        rows = [PriceRow.model_validate(row) for row in data["rows"]]
        if source is not None:
            rows = [
                row.model_copy(update={"source": f"{source}: {row.source}" if row.source else source})
                for row in rows
            ]
        return cls(rows)

    def with_overrides(self, other: PriceTable) -> PriceTable:
        """This table with every row of ``other`` winning over all other sources."""
        overrides = {**self._overrides, **other._rows, **other._overrides}
        return PriceTable(list(self._rows.values()), overrides=list(overrides.values()), at=self.at)

    def dated(self, at: datetime | None) -> PriceTable:
        """The same table read for prices in force at ``at`` (default: now)."""
        return PriceTable(list(self._rows.values()), overrides=list(self._overrides.values()), at=at)

    def models(self, provider: str) -> list[str]:
        """Model names of our rows and the overrides (genai-prices names are in the catalog)."""
        return [model for (p, model) in (*self._rows, *self._overrides) if p == provider]

    def lookup(self, provider: str, model: str | None) -> PriceRow | None:
        if not model:
            return None
        key = (provider, model)
        if key not in self._found:
            self._found[key] = self._find(Provider(provider), model)
        return self._found[key]

    def _find(self, provider: Provider, model: str) -> PriceRow | None:
        candidates = name_candidates(provider, model)
        for layer in (self._overrides, None, self._rows):
            for name in candidates:
                if layer is None:
                    fields = genai_source.row_fields(provider, name, self.at)
                    if fields is not None:
                        return PriceRow.model_validate(fields)
                elif (row := layer.get((provider.value, name))) is not None:
                    return row
        return None

    def context_window(self, provider: str, model: str | None) -> int | None:
        """The model's context window from the price data, else from genai-prices' model data."""
        if not model:
            return None
        key = (provider, model)
        if key not in self._windows:
            self._windows[key] = self._find_window(provider, model)
        return self._windows[key]

    def _find_window(self, provider: str, model: str) -> int | None:
        row = self.lookup(provider, model)
        if row is not None and row.context_window:
            return row.context_window
        for name in name_candidates(provider, model):
            window = genai_source.context_window(Provider(provider), name)
            if window:
                return window
        return None

    def cost(self, provider: str, model: str | None, usage: Usage) -> Cost:
        """Cost of one request's usage (its size picks the long-context tier)."""
        row = self.lookup(provider, model)
        if row is None:
            return Cost(unpriced_tokens=usage.total_tokens, unpriced_models=[model or "(none)"])
        prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        return row.priced(usage, long=row.is_long(prompt))


class CostTally:
    """Usage and cost of many requests, added one request at a time.

    Equals the sum of :meth:`PriceTable.cost` over the requests (up to float rounding): tokens are
    summed per (model, long-context tier) and priced once, so adding a request costs a few integer
    additions instead of building ``Usage`` and ``Cost`` objects.
    """

    def __init__(self, prices: PriceTable, provider: str) -> None:
        self._prices = prices
        self._provider = provider
        self._rows: dict[str | None, PriceRow | None] = {}
        self._tokens: dict[tuple[str | None, bool], list[int]] = {}

    def add(self, model: str | None, usage: Usage) -> None:
        if model in self._rows:
            row = self._rows[model]
        else:
            row = self._rows[model] = self._prices.lookup(self._provider, model)
        long = row is not None and row.is_long(
            usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        )
        sums = self._tokens.get((model, long))
        if sums is None:
            sums = self._tokens[(model, long)] = [0, 0, 0, 0]
        sums[0] += usage.input_tokens
        sums[1] += usage.output_tokens
        sums[2] += usage.cache_read_tokens
        sums[3] += usage.cache_write_tokens

    @property
    def usage(self) -> Usage:
        totals = [sum(column) for column in zip(*self._tokens.values(), strict=True)] or [0, 0, 0, 0]
        return Usage(
            input_tokens=totals[0],
            output_tokens=totals[1],
            cache_read_tokens=totals[2],
            cache_write_tokens=totals[3],
        )

    @property
    def cost(self) -> Cost:
        total = Cost()
        for (model, long), (inp, out, read, write) in self._tokens.items():
            row = self._rows[model]
            if row is None:
                unpriced = Cost(unpriced_tokens=inp + out + read + write, unpriced_models=[model or "(none)"])
                total = total + unpriced
                continue
            summed = Usage(
                input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
            )
            total = total + row.priced(summed, long=long)
        return total

    def by_model(self) -> dict[str, tuple[Usage, Cost]]:
        """Usage and cost of each model added (``(none)`` for requests without one)."""
        out: dict[str, tuple[Usage, Cost]] = {}
        for model in self._rows:
            part = CostTally(self._prices, self._provider)
            part._rows = {model: self._rows[model]}
            part._tokens = {key: sums for key, sums in self._tokens.items() if key[0] == model}
            out[model or "(none)"] = (part.usage, part.cost)
        return out


PRICE_TABLE_ENV = "BATCH_PROVIDER_PRICE_TABLE"
"""A JSON file (local path or any fsspec URL) whose rows override or extend the packaged table."""


@cache
def _packaged_table() -> PriceTable:
    text = resources.files("batch_provider.data").joinpath("prices.json").read_text()
    return PriceTable.from_json(json.loads(text), source="batch_provider prices.json")


@cache
def _table_with_overrides(path: str) -> PriceTable:
    import fsspec

    with fsspec.open(path, "rb") as fh:
        return _packaged_table().with_overrides(PriceTable.from_json(json.loads(fh.read()), source=path))


def default_price_table() -> PriceTable:
    """The packaged table, with the rows of ``$BATCH_PROVIDER_PRICE_TABLE`` winning when set."""
    path = os.environ.get(PRICE_TABLE_ENV)
    return _table_with_overrides(path) if path else _packaged_table()


def load_price_table(override_path: Any | None = None) -> PriceTable:
    """The default table, with the rows of ``override_path`` (same JSON shape) winning."""
    table = default_price_table()
    if override_path is None:
        return table
    with override_path.open("rb") as fh:
        return table.with_overrides(PriceTable.from_json(json.loads(fh.read()), source=str(override_path)))
