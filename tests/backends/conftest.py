"""Fixtures for backend tests: one emulator per module, reset before each test, and helpers to
split, submit, end and reconcile batches over real HTTP."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.backends.transport import TransportPolicy
from batch_provider.core.contract import BatchBackend, Chunk
from batch_provider.core.models import BatchRef, BatchState, ItemStatus, LLMRequest, RejectedRow, ResultRecord
from batch_provider.core.reconcile import ReconcileReport, expected_ids, reconcile
from batch_provider.core.split import split_requests
from batch_provider.emulator.process import EmulatorProcess, running_emulator

FAST = TransportPolicy(backoff_base=0.01, backoff_cap=0.05, deadline=20.0, read_timeout=10.0)
"""Real retries, short waits: the schedule itself is unit-tested in test_transport_policy."""


@pytest.fixture(scope="module")
def module_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0) as emu:
        yield emu


@pytest.fixture
def emu(module_emulator: EmulatorProcess) -> EmulatorProcess:
    module_emulator.reset()
    return module_emulator


@pytest.fixture
async def openai(emu: EmulatorProcess) -> AsyncIterator[OpenAIBackend]:
    async with OpenAIBackend("sk-emulator-key-123", emu.base_url + "/v1", policy=FAST) as backend:
        yield backend  # type: ignore[misc]


@pytest.fixture
async def anthropic(emu: EmulatorProcess) -> AsyncIterator[AnthropicBackend]:
    async with AnthropicBackend("sk-ant-emulator-key-123", emu.base_url, policy=FAST) as backend:
        yield backend  # type: ignore[misc]


def chat(custom_id: str, model: str = "gpt-6-luna", **fields) -> LLMRequest:
    base = {"max_tokens": 40, "messages": [{"role": "user", "content": f"Classify {custom_id}"}]}
    return LLMRequest(custom_id=custom_id, model=model, **{**base, **fields})


@dataclass
class Run:
    """One split + submit of a list of requests, and everything needed to check the invariant."""

    backend: BatchBackend
    inputs: list[str]
    chunks: list[Chunk]
    refs: list[BatchRef]
    rejected: list[RejectedRow]
    started: datetime
    records: list[ResultRecord] = field(default_factory=list)
    reports: list[ReconcileReport] = field(default_factory=list)

    async def collect(self) -> list[ResultRecord]:
        """Reconcile every batch (which must have ended) plus the rejects into one record list."""
        self.records = [row.to_record() for row in self.rejected]
        for chunk, ref in zip(self.chunks, self.refs, strict=True):
            state = await self.backend.status(ref.batch_id)
            assert state.is_terminal, state
            report = ReconcileReport()
            expected = expected_ids(chunk.path, self.backend)
            async for record in reconcile(ref, expected, state, self.backend.results(ref), report=report):
                self.records.append(record)
            self.reports.append(report)
        assert_invariant(self.inputs, self.records)
        return self.records

    def by_id(self) -> dict[str, ResultRecord]:
        return {r.custom_id: r for r in self.records}


def assert_invariant(inputs: list[str], records: list[ResultRecord]) -> Counter[ItemStatus]:
    """inputs = succeeded + errored + expired + cancelled + rejected, one record per input row, and
    no id twice outside rejects (a duplicate input row is rejected under the id it repeats)."""
    ids = [r.custom_id for r in records]
    answered = [r.custom_id for r in records if r.status is not ItemStatus.REJECTED]
    assert len(answered) == len(set(answered)), [i for i, n in Counter(answered).items() if n > 1]
    assert Counter(ids) == Counter(inputs)
    counts = Counter(r.status for r in records)
    assert sum(counts.values()) == len(inputs)
    return counts


async def submit_all(
    backend: BatchBackend,
    requests: list[LLMRequest],
    parts_dir: Path,
    *,
    tags: dict[str, str] | None = None,
    max_requests_per_batch: int | None = None,
) -> Run:
    rejected: list[RejectedRow] = []
    limits = backend.limits.lowered(max_requests_per_batch=max_requests_per_batch)
    started = datetime.now(UTC) - timedelta(seconds=2)
    chunks = list(split_requests(requests, backend, parts_dir, limits=limits, on_reject=rejected.append))
    refs = [await backend.submit(chunk, tags=tags or {}) for chunk in chunks]
    return Run(backend, [r.custom_id for r in requests], chunks, refs, rejected, started)


async def end_all(emu: EmulatorProcess, backend: BatchBackend, refs: list[BatchRef]) -> list[BatchState]:
    emu.advance(100_000)
    return [await backend.status(ref.batch_id) for ref in refs]
