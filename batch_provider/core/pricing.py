"""Price table and cost arithmetic: what a run cost at batch prices and what it would have cost
synchronously.

Invariants:
- Prices are data (``batch_provider/data/prices.json``), in USD per million tokens at standard
  (synchronous) rates; batch rates are standard × ``batch_discount``. Users override or extend the
  table with their own file without a release; their rows win.
- A model is matched by exact id, else by the longest table id that prefixes it (snapshot ids
  like ``gpt-6-luna-2026-09-22`` match ``gpt-6-luna``).
- Bedrock cross-region inference-profile prefixes (``us.``, ``eu.``, ``global.`` …) are ignored.
- An unknown model has an unknown cost (``None``), never a guessed one.
- ``Usage.input_tokens`` excludes cache reads and writes, which are priced on their own.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field

from batch_provider.core.models import Usage

MILLION = 1_000_000
_INFERENCE_PROFILE = re.compile(r"^(?:us|eu|apac|us-gov|global|jp|au|ca)\.(?=[a-z0-9-]+\.)")


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
    long_context: LongContextTier | None = None
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
        standard = (
            usage.input_tokens * input_rate
            + usage.output_tokens * output_rate
            + usage.cache_read_tokens * read_rate
            + usage.cache_write_tokens * write_rate
        ) / MILLION
        return Cost(batch_usd=standard * self.batch_discount, standard_usd=standard)


class Cost(BaseModel):
    """Dollars for some usage: at batch prices, at synchronous prices, and the difference."""

    batch_usd: float = 0.0
    standard_usd: float = 0.0
    unpriced_tokens: int = 0
    """Tokens of models the table does not know: not included in the dollar figures."""
    unpriced_models: list[str] = Field(default_factory=list)

    @property
    def savings_usd(self) -> float:
        return self.standard_usd - self.batch_usd

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            batch_usd=self.batch_usd + other.batch_usd,
            standard_usd=self.standard_usd + other.standard_usd,
            unpriced_tokens=self.unpriced_tokens + other.unpriced_tokens,
            unpriced_models=sorted(set(self.unpriced_models) | set(other.unpriced_models)),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "batch_usd": round(self.batch_usd, 6),
            "standard_usd": round(self.standard_usd, 6),
            "savings_usd": round(self.savings_usd, 6),
            "unpriced_tokens": self.unpriced_tokens,
            "unpriced_models": self.unpriced_models,
        }


class PriceTable:
    def __init__(self, rows: list[PriceRow]):
        self._rows: dict[tuple[str, str], PriceRow] = {(r.provider, r.model): r for r in rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PriceTable:
        return cls([PriceRow.model_validate(row) for row in data["rows"]])

    def with_overrides(self, other: PriceTable) -> PriceTable:
        merged = dict(self._rows)
        merged.update(other._rows)
        return PriceTable(list(merged.values()))

    def models(self, provider: str) -> list[str]:
        return [model for (p, model) in self._rows if p == provider]

    def lookup(self, provider: str, model: str | None) -> PriceRow | None:
        if not model:
            return None
        if provider == "bedrock":
            model = _INFERENCE_PROFILE.sub("", model)
        exact = self._rows.get((provider, model))
        if exact is not None:
            return exact
        matches = [row for (p, m), row in self._rows.items() if p == provider and model.startswith(m)]
        return max(matches, key=lambda row: len(row.model), default=None)

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


PRICE_TABLE_ENV = "BATCH_PROVIDER_PRICE_TABLE"
"""A JSON file (local path or any fsspec URL) whose rows override or extend the packaged table."""


@cache
def _packaged_table() -> PriceTable:
    text = resources.files("batch_provider.data").joinpath("prices.json").read_text()
    return PriceTable.from_json(json.loads(text))


@cache
def _table_with_overrides(path: str) -> PriceTable:
    import fsspec

    with fsspec.open(path, "rb") as fh:
        return _packaged_table().with_overrides(PriceTable.from_json(json.loads(fh.read())))


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
        return table.with_overrides(PriceTable.from_json(json.loads(fh.read())))


DEFAULT_OUTPUT_CEILING = 4096
DEFAULT_EXPECTED_OUTPUT_RATIO = 0.5
"""Without history, a request is expected to use half of its max_tokens."""


def estimate_input_tokens(text: str) -> int:
    """About four characters a token: the rule of thumb for English text with BPE tokenizers."""
    return max(1, -(-len(text) // 4))


class ModelHistory(BaseModel):
    requests: int = 0
    output_tokens: int = 0

    @property
    def mean_output(self) -> float | None:
        return self.output_tokens / self.requests if self.requests else None


class Calibration(BaseModel):
    """Output tokens per succeeded request, by provider and model, from earlier collected runs."""

    models: dict[str, ModelHistory] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Any) -> Calibration:
        try:
            with path.open("rb") as fh:
                return cls.model_validate_json(fh.read())
        except (OSError, ValueError):
            return cls()

    def save(self, path: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            fh.write(self.model_dump_json().encode())

    def record(self, provider: str, model: str, succeeded: int, output_tokens: int) -> None:
        entry = self.models.setdefault(f"{provider}/{model}", ModelHistory())
        entry.requests += succeeded
        entry.output_tokens += output_tokens

    def mean_output(self, provider: str, model: str) -> float | None:
        entry = self.models.get(f"{provider}/{model}")
        return entry.mean_output if entry else None


class ModelEstimate(BaseModel):
    requests: int = 0
    input_tokens: int = 0
    output_tokens_ceiling: int = 0
    output_tokens_expected: int = 0
    basis: str = "default"
    """``history`` when the expected output comes from earlier runs, else ``default``."""


class CostEstimate(BaseModel):
    """What a run should cost before anything is sent: expected, and the ceiling if every request
    used its whole max_tokens. Unknown models add tokens but no dollars."""

    models: dict[str, ModelEstimate] = Field(default_factory=dict)
    expected: Cost = Field(default_factory=Cost)
    ceiling: Cost = Field(default_factory=Cost)

    def summary(self) -> dict[str, Any]:
        return {
            "expected": self.expected.summary(),
            "ceiling": self.ceiling.summary(),
            "models": {name: m.model_dump() for name, m in self.models.items()},
        }


class CostEstimator:
    """Accumulates per-model token estimates request by request, in constant memory."""

    def __init__(self, provider: str):
        self.provider = provider
        self._models: dict[str, ModelEstimate] = {}

    def add(self, model: str | None, prompt_text: str, max_tokens: int | None, *, embedding: bool) -> None:
        entry = self._models.setdefault(model or "(none)", ModelEstimate())
        entry.requests += 1
        entry.input_tokens += estimate_input_tokens(prompt_text)
        entry.output_tokens_ceiling += 0 if embedding else (max_tokens or DEFAULT_OUTPUT_CEILING)

    def finish(self, prices: PriceTable, calibration: Calibration | None = None) -> CostEstimate:
        estimate = CostEstimate()
        for model, entry in self._models.items():
            mean = calibration.mean_output(self.provider, model) if calibration else None
            if mean is not None:
                expected = min(entry.output_tokens_ceiling, round(mean * entry.requests))
                entry.basis = "history"
            else:
                expected = round(entry.output_tokens_ceiling * DEFAULT_EXPECTED_OUTPUT_RATIO)
            entry.output_tokens_expected = expected
            estimate.models[model] = entry
            # Priced per model in aggregate: the long-context tier is applied to the mean request.
            mean_input = entry.input_tokens // max(1, entry.requests)
            row = prices.lookup(self.provider, model)
            if row is None:
                unpriced = Cost(unpriced_tokens=entry.input_tokens + expected, unpriced_models=[model])
                estimate.expected = estimate.expected + unpriced
                estimate.ceiling = estimate.ceiling + unpriced
                continue
            input_rate, output_rate, _, _ = row.rates(mean_input)
            for name, output in (("expected", expected), ("ceiling", entry.output_tokens_ceiling)):
                standard = (entry.input_tokens * input_rate + output * output_rate) / MILLION
                cost = Cost(batch_usd=standard * row.batch_discount, standard_usd=standard)
                setattr(estimate, name, getattr(estimate, name) + cost)
        return estimate
