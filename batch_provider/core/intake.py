"""Attempt 1's intake: one pass over a run's input, before anything is paid for.

Each input item ends, in input order, in exactly one place:

- ``rejects.jsonl``: a :class:`RejectedRow` from rendering, a request the provider cannot take
  (:func:`request_problem`: unknown model, absurd ``max_tokens``; :func:`context_problem`: more
  input tokens than the model's context window), or one the splitter refuses (encoding, size,
  duplicate custom_id);
- ``attempt-1/cached.jsonl``: a request answered before, its stored success relabelled with this
  run's custom_id; it is never sent;
- a part file under ``attempt-1/requests/``, written by the splitter.

Invariants:
- ``inputs == rejected + cached + requests in the part files``; the counts are recorded with the
  chunks in the ledger's attempt 1.
- The input fingerprint is sha256 over every item (rejects included) as
  ``model_dump_json(exclude_defaults=True)`` plus ``\\n``, in input order. :func:`input_fingerprint`
  computes the same digest without writing anything: that is how a rerun recognizes its input.
- With a cache, requests are looked up ``CACHE_BLOCK`` at a time; a block only delays its
  requests, never reorders them. Cache hits and the splitter share one table of accepted
  custom_ids, so the first of several items with one id is the one kept (answered from the cache
  or sent), and the others are rejected as duplicates. Every miss's cache key goes to
  ``attempt-1/cache_keys.jsonl`` before the splitter sees the request, except a miss whose id is
  already taken (the splitter rejects it), so a sent request's line in that file is its own: collect
  stores the answer under that key. Memory is one block plus the splitter's own.
- The cost estimate covers the requests forwarded to the splitter only (those it then rejects
  included); a cache hit adds its stored usage at batch price to ``cache_savings_usd`` instead.
- The files above are rewritten whole (each replaced at once, never truncated first), so two
  submits of one run taking the same input at the same time write the same bytes and a reader
  never sees half a file; submit runs the intake only while no split of attempt 1 is published
  (:func:`batch_provider.core.claims.publish_split`), i.e. before anything was sent from them.
- Requests go on the wire under wire ids built from ``wire_token`` (:mod:`.wire_ids`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batch_provider.core.cache import CACHE_BLOCK, ResultCache, relabelled
from batch_provider.core.catalog import context_problem, request_problem
from batch_provider.core.contract import BatchBackend
from batch_provider.core.estimate import Calibration, CostEstimator
from batch_provider.core.jsonl import dumps_line
from batch_provider.core.ledger import LedgerAttempt, LedgerChunk
from batch_provider.core.models import LLMRequest, RejectedRow, RequestKind
from batch_provider.core.pricing import CostTally, PriceTable
from batch_provider.core.rundir import RunDirectory, open_replacing
from batch_provider.core.shaped import RequestShape, ShapedRequest, item_line
from batch_provider.core.split import DUPLICATE_ID, RequestSplitter, SeenIds
from batch_provider.core.tokens import TokenCount, request_tokens, text_tokens

__all__ = ["CACHE_BLOCK", "input_fingerprint", "intake"]


Item = LLMRequest | RejectedRow | ShapedRequest
Request = LLMRequest | ShapedRequest


def input_fingerprint(items: Iterable[Item]) -> str:
    """sha256 over the input items in order: equal for the same rows rendered the same way."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item_line(item))
    return digest.hexdigest()


@dataclass
class _Intake:
    """One pass over the input: fingerprint, rejects, cache hits and the cost estimate, forwarding
    the requests that must be sent to the splitter. ``rejects``, ``cached_out`` and ``keys_out``
    are the open output files."""

    backend: BatchBackend
    cache: ResultCache | None
    prices: PriceTable
    allow_unknown_models: bool
    rejects: Any
    cached_out: Any
    keys_out: Any
    inputs: int = 0
    rejected: int = 0
    cached: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    seen: SeenIds = field(default_factory=SeenIds)
    """custom_ids accepted so far, by the cache or by the splitter (which shares this table)."""

    def __post_init__(self) -> None:
        self.estimator = CostEstimator(self.backend.provider.value)
        self.savings = CostTally(self.prices, self.backend.provider.value)
        """Usage of the cache hits, priced once at the end (batch prices): ``cache_savings_usd``."""
        self._tokens: dict[int, TokenCount] = {}
        """Input tokens of the requests between the size check and the estimate, by ``id()``."""
        self._shapes: dict[RequestShape, _ShapeTally] = {}

    def reject(self, row: RejectedRow) -> None:
        self.rejected += 1
        self.rejects.write(row.to_record().json_line())

    def requests(self, items: Iterable[Item]) -> Iterator[Request]:
        """The requests to send, in input order; with a cache, looked up ``CACHE_BLOCK`` at a time."""
        block: list[Request] = []
        for item in items:
            self.inputs += 1
            self.digest.update(item_line(item))
            if type(item) is ShapedRequest:
                tally = self._shapes.get(item.shape) or self._tally(item.shape)
                tokens = item.shape.input_tokens(item.text)
                if tally.fits and (tally.window is None or tokens <= tally.window):
                    item.tokens = tokens
                else:
                    item = item.request()  # the general path rejects it, naming row and field
            if isinstance(item, LLMRequest):
                problem = request_problem(
                    self.backend.provider,
                    item,
                    allow_unknown_models=self.allow_unknown_models,
                    prices=self.prices,
                )
                if problem is None:
                    tokens = request_tokens(self.backend.provider, item)
                    problem = context_problem(self.backend.provider, item, tokens.input, self.prices)
                    if problem is None:
                        self._tokens[id(item)] = tokens
                item = problem or item
            if isinstance(item, RejectedRow):
                self.reject(item)
                continue
            if self.cache is None:
                self._estimate(item)
                yield item
                continue
            block.append(item)
            if len(block) >= CACHE_BLOCK:
                yield from self._misses(block)
                block = []
        if block:
            yield from self._misses(block)

    def _tally(self, shape: RequestShape) -> _ShapeTally:
        """The tally of ``shape``, made at its first request: the model checks of its reference
        request (every request of the shape passes or fails them alike) and its context window."""
        reference = shape.reference
        provider = self.backend.provider
        fits = (
            request_problem(
                provider, reference, allow_unknown_models=self.allow_unknown_models, prices=self.prices
            )
            is None
        )
        model = reference.model
        window = self.prices.context_window(provider.value, model) if isinstance(model, str) else None
        tally = self._shapes[shape] = _ShapeTally(fits, window, _estimate_terms(reference))
        return tally

    def finish_estimate(self) -> None:
        """Add the shapes' sums to the estimate (each shape's model is already in place)."""
        for tally in self._shapes.values():
            if not tally.requests:
                continue
            model, max_tokens, embedding, _ = tally.terms
            self.estimator.add_many(
                model, tally.requests, tally.input_tokens, tally.largest, max_tokens, embedding=embedding
            )

    def _misses(self, block: list[Request]) -> Iterator[Request]:
        """Write the cache hits of ``block`` to ``cached.jsonl``; yield the rest, in order."""
        assert self.cache is not None
        provider = self.backend.provider.value
        block_keys = [_cache_key(provider, request) for request in block]
        hits = self.cache.get_many(block_keys)
        for request, key in zip(block, block_keys, strict=True):
            custom_id = request.custom_id
            hit = hits.get(key)
            if hit is not None:
                self._tokens.pop(id(request), None)
                if not self.seen.add(custom_id):
                    self.reject(
                        RejectedRow(
                            row=request.row, custom_id=custom_id, field="custom_id", reason=DUPLICATE_ID
                        )
                    )
                    continue
                self.cached += 1
                self.savings.add(hit.model, hit.usage)
                self.cached_out.write(relabelled(hit, custom_id).json_line())
                continue
            if custom_id not in self.seen:
                self.keys_out.write(dumps_line({"custom_id": custom_id, "key": key}) + b"\n")
            self._estimate(request)
            yield request

    def _estimate(self, request: Request) -> None:
        if type(request) is ShapedRequest:
            tally = self._shapes[request.shape]
            if not tally.requests:  # its model takes its place in the estimate's order now
                model, max_tokens, embedding, _ = tally.terms
                self.estimator.add_many(model, 0, 0, 0, max_tokens, embedding=embedding)
            tally.add(request.tokens)
            return
        tokens = self._tokens.pop(id(request), None) or request_tokens(self.backend.provider, request)
        model, max_tokens, embedding, schema_tokens = _estimate_terms(request)
        self.estimator.add_tokens(model, tokens, max_tokens, embedding=embedding, schema_tokens=schema_tokens)


class _ShapeTally:
    """Per shape: whether its requests pass the model checks and its context window (None:
    unknown), what the estimate reads of its requests besides their tokens, and the sums of the
    requests sent, added to the estimate at the end (:meth:`_Intake.finish_estimate`)."""

    __slots__ = ("fits", "input_tokens", "largest", "requests", "terms", "window")

    def __init__(self, fits: bool, window: int | None, terms: tuple[Any, ...]) -> None:
        self.fits = fits
        self.window = window
        self.terms = terms
        self.requests = self.input_tokens = self.largest = 0

    def add(self, tokens: int) -> None:
        self.requests += 1
        self.input_tokens += tokens
        if tokens > self.largest:
            self.largest = tokens


def _estimate_terms(request: LLMRequest) -> tuple[str | None, int | None, bool, int | None]:
    """What the estimate reads of a request besides its tokens: model, output ceiling, whether it
    is an embedding, tokens of its schema."""
    schema = request.response_schema
    return (
        request.model or (request.native or {}).get("model"),
        request.max_tokens or _native_max_tokens(request),
        request.kind is RequestKind.EMBEDDING,
        text_tokens(len(json.dumps(schema))) if schema is not None else None,
    )


def _cache_key(provider: str, request: Request) -> str:
    if type(request) is ShapedRequest:
        key = request.shape.cache_key(provider, request.text)
        if key is not None:
            return key
        request = request.request()
    return ResultCache.key(provider, request)


def _native_max_tokens(request: LLMRequest) -> int | None:
    body = {**(request.native or {}), **request.extra}
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int):
            return body[name]
    return None


def intake(
    backend: BatchBackend,
    items: Iterable[Item],
    run_dir: RunDirectory,
    *,
    cache: ResultCache | None,
    prices: PriceTable,
    max_requests_per_batch: int | None,
    max_bytes_per_batch: int | None,
    allow_unknown_models: bool,
    wire_token: str | None = None,
) -> LedgerAttempt:
    """Write attempt 1's part files, rejects and cache hits; estimate what the parts will cost.

    The returned attempt is not yet in the ledger: the caller records it before sending anything.
    """
    limits = backend.limits.lowered(
        max_requests_per_batch=max_requests_per_batch, max_bytes_per_batch=max_bytes_per_batch
    )
    parts_dir = run_dir.requests_dir(1)
    # Not emptied first: a concurrent submit of the same run may be sending from these files.
    parts_dir.mkdir(parents=True, exist_ok=True)  # attempt-1/ too, for cached.jsonl and cache_keys.jsonl
    with (
        open_replacing(run_dir.rejects) as rejects,
        open_replacing(run_dir.cached) as cached,
        open_replacing(run_dir.cache_keys) as keys,
    ):
        taken = _Intake(backend, cache, prices, allow_unknown_models, rejects, cached, keys)
        splitter = RequestSplitter(
            backend,
            parts_dir,
            limits=limits,
            on_reject=taken.reject,
            seen=taken.seen,
            wire_token=wire_token,
            attempt=1,
        )
        chunks = [
            LedgerChunk(
                index=chunk.index,
                part=run_dir.relative(chunk.path),
                request_count=chunk.request_count,
                byte_size=chunk.byte_size,
                group=chunk.group,
                model=chunk.model,
                endpoint=chunk.endpoint,
            )
            for chunk in splitter.split(taken.requests(items))
        ]
    taken.finish_estimate()
    estimate = taken.estimator.finish(prices, Calibration.load(run_dir.calibration))
    return LedgerAttempt(
        attempt=1,
        fingerprint=splitter.fingerprint,
        input_fingerprint=taken.digest.hexdigest(),
        chunks=chunks,
        inputs=taken.inputs,
        rejected=taken.rejected,
        cached=taken.cached,
        cache_savings_usd=taken.savings.cost.batch_usd,
        estimate=estimate.summary(),
    )
