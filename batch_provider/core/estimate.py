"""What a run should cost before anything is sent: token estimates per model, priced.

Invariants:
- Input tokens are counted over everything a request carries (:mod:`batch_provider.core.tokens`).
- The ceiling is an upper bound for the cap: every request uses its whole ``max_tokens``, every
  token of a prompt-cache prefix is written at the cache-write rate (never read cheaper), and a
  model's requests are priced at the long-context tier of its largest request.
- The expected figure is the best guess: output from earlier runs of the model (``history``),
  else from the response schema's size (``schema``), else half of ``max_tokens``; a cached prefix
  is written once per model and read by the other requests.
- A model without a price adds tokens but no dollars, and is listed in ``unpriced_models``:
  :func:`batch_provider.core.submission.submit_run` refuses a capped run that has one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from batch_provider.core.models import Usage
from batch_provider.core.pricing import Cost, PriceRow, PriceTable
from batch_provider.core.tokens import TokenCount, text_tokens

__all__ = [
    "DEFAULT_EXPECTED_OUTPUT_RATIO",
    "DEFAULT_OUTPUT_CEILING",
    "Calibration",
    "CostEstimate",
    "CostEstimator",
    "ModelEstimate",
    "ModelHistory",
    "estimate_input_tokens",
]

DEFAULT_OUTPUT_CEILING = 4096
DEFAULT_EXPECTED_OUTPUT_RATIO = 0.5
"""Without history or a schema, a request is expected to use half of its max_tokens."""


def estimate_input_tokens(text: str) -> int:
    """About four characters a token: the rule of thumb for English text with BPE tokenizers."""
    return max(1, text_tokens(len(text)))


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
    """All input tokens, cacheable ones included."""
    cacheable_tokens: int = 0
    """Of ``input_tokens``, those in prefixes the requests mark for prompt caching."""
    largest_input_tokens: int = 0
    largest_cacheable_tokens: int = 0
    output_tokens_ceiling: int = 0
    output_tokens_expected: int = 0
    schema_requests: int = 0
    schema_output_tokens: int = 0
    """Expected output of the requests with a response schema: the schema's size, capped at max_tokens."""
    schema_output_ceiling: int = 0
    basis: str = "default"
    """How ``output_tokens_expected`` was found: ``history`` (earlier runs of the model),
    ``schema`` (response schema size), ``default`` (half of max_tokens), or ``schema+default``."""


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


class _Tally:
    """A model's running sums while requests are added: plain attributes, as adding a request
    runs once per row (``ModelEstimate`` validates every assignment); made a ``ModelEstimate``
    by :meth:`CostEstimator.finish`."""

    __slots__ = (
        "cacheable_tokens",
        "input_tokens",
        "largest_cacheable_tokens",
        "largest_input_tokens",
        "output_tokens_ceiling",
        "requests",
        "schema_output_ceiling",
        "schema_output_tokens",
        "schema_requests",
    )

    def __init__(self) -> None:
        self.requests = self.input_tokens = self.cacheable_tokens = 0
        self.largest_input_tokens = self.largest_cacheable_tokens = self.output_tokens_ceiling = 0
        self.schema_requests = self.schema_output_tokens = self.schema_output_ceiling = 0

    def estimate(self) -> ModelEstimate:
        return ModelEstimate(**{name: getattr(self, name) for name in self.__slots__})


class CostEstimator:
    """Accumulates per-model token estimates request by request, in constant memory."""

    def __init__(self, provider: str):
        self.provider = provider
        self._models: dict[str, _Tally] = {}

    def add(self, model: str | None, prompt_text: str, max_tokens: int | None, *, embedding: bool) -> None:
        """Count a request known only by its prompt text (four characters a token)."""
        tokens = TokenCount(input=estimate_input_tokens(prompt_text))
        self.add_tokens(model, tokens, max_tokens, embedding=embedding)

    def add_tokens(
        self,
        model: str | None,
        tokens: TokenCount,
        max_tokens: int | None,
        *,
        embedding: bool,
        schema_tokens: int | None = None,
    ) -> None:
        entry = self._models.get(model or "(none)")
        if entry is None:
            entry = self._models[model or "(none)"] = _Tally()
        entry.requests += 1
        entry.input_tokens += tokens.input
        entry.cacheable_tokens += tokens.cacheable
        if tokens.input > entry.largest_input_tokens:
            entry.largest_input_tokens = tokens.input
        if tokens.cacheable > entry.largest_cacheable_tokens:
            entry.largest_cacheable_tokens = tokens.cacheable
        ceiling = 0 if embedding else (max_tokens or DEFAULT_OUTPUT_CEILING)
        entry.output_tokens_ceiling += ceiling
        if schema_tokens is not None and not embedding:
            entry.schema_requests += 1
            entry.schema_output_tokens += min(ceiling, schema_tokens)
            entry.schema_output_ceiling += ceiling

    def add_many(
        self,
        model: str | None,
        requests: int,
        input_tokens: int,
        largest_input_tokens: int,
        max_tokens: int | None,
        *,
        embedding: bool,
    ) -> None:
        """What ``requests`` calls of :meth:`add_tokens` would add for requests of ``input_tokens``
        in all (the largest ``largest_input_tokens``), none cacheable, none with a schema."""
        entry = self._models.get(model or "(none)")
        if entry is None:
            entry = self._models[model or "(none)"] = _Tally()
        entry.requests += requests
        entry.input_tokens += input_tokens
        if largest_input_tokens > entry.largest_input_tokens:
            entry.largest_input_tokens = largest_input_tokens
        entry.output_tokens_ceiling += requests * (0 if embedding else (max_tokens or DEFAULT_OUTPUT_CEILING))

    def finish(self, prices: PriceTable, calibration: Calibration | None = None) -> CostEstimate:
        estimate = CostEstimate()
        for model, tally in self._models.items():
            entry = tally.estimate()
            entry.output_tokens_expected = _expected_output(entry, calibration, self.provider, model)
            estimate.models[model] = entry
            row = prices.lookup(self.provider, model) if model != "(none)" else None
            if row is None:
                for name, output in (
                    ("expected", entry.output_tokens_expected),
                    ("ceiling", entry.output_tokens_ceiling),
                ):
                    unpriced = Cost(unpriced_tokens=entry.input_tokens + output, unpriced_models=[model])
                    setattr(estimate, name, getattr(estimate, name) + unpriced)
                continue
            estimate.expected = estimate.expected + _priced(row, entry, ceiling=False)
            estimate.ceiling = estimate.ceiling + _priced(row, entry, ceiling=True)
        return estimate


def _expected_output(entry: ModelEstimate, calibration: Calibration | None, provider: str, model: str) -> int:
    mean = calibration.mean_output(provider, model) if calibration else None
    if mean is not None:
        entry.basis = "history"
        return min(entry.output_tokens_ceiling, round(mean * entry.requests))
    rest = entry.output_tokens_ceiling - entry.schema_output_ceiling
    expected = entry.schema_output_tokens + round(rest * DEFAULT_EXPECTED_OUTPUT_RATIO)
    if entry.schema_requests == entry.requests and entry.requests:
        entry.basis = "schema"
    elif entry.schema_requests:
        entry.basis = "schema+default"
    return expected


def _priced(row: PriceRow, entry: ModelEstimate, *, ceiling: bool) -> Cost:
    """Batch and standard cost of a model's requests (see the module's invariants)."""
    if ceiling:
        long = row.is_long(entry.largest_input_tokens)
        writes, reads, output = entry.cacheable_tokens, 0, entry.output_tokens_ceiling
    else:
        long = row.is_long(entry.input_tokens // max(1, entry.requests))
        writes = entry.largest_cacheable_tokens
        reads = entry.cacheable_tokens - writes
        output = entry.output_tokens_expected
    usage = Usage(
        input_tokens=entry.input_tokens - entry.cacheable_tokens,
        output_tokens=output,
        cache_read_tokens=reads,
        cache_write_tokens=writes,
    )
    return row.priced(usage, long=long)
