"""The cap fails closed, model names are exact, and oversized requests never reach a batch.

Over real HTTP against the emulator; every refusal is checked to create zero batches.
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from test_run_lifecycle import backend_for, batches_created, read_lines, wait_all

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.models import LLMRequest, Message
from batch_provider.core.rejects import TooManyRejectsError
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import BudgetExceededError, submit_run

USER = Message(role="user", content="Summarise the ticket: the printer is on fire again.")


def requests(model: str, count: int = 3, **fields: Any) -> list[LLMRequest]:
    fields.setdefault("max_tokens", 64)
    fields.setdefault("messages", [USER])
    return [LLMRequest(custom_id=f"r{i}", model=model, **fields).at_row(i + 1) for i in range(count)]


async def submit(emulator: Any, provider: str, items: list[Any], tmp_path: Path, name: str, **options: Any):
    run_dir = run_directory(tmp_path, dag_id="d", run_id=name)
    async with backend_for(provider, emulator) as backend:
        key = RunKey(dag_id="d", task_id="s", run_id=name)
        handle = await submit_run(backend, items, run_dir, run_key=key, conn_id=None, **options)
    return handle, run_dir


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1-mini"),
        ("anthropic", "claude-3-5-haiku-20241022"),
        ("anthropic", "claude-sonnet-4-20250514"),
    ],
)
async def test_a_tiny_cap_refuses_models_priced_from_genai_prices(
    provider: str, model: str, emulator: Any, tmp_path: Path
) -> None:
    before = batches_created(emulator, provider)
    with pytest.raises(BudgetExceededError, match=r"over max_cost_usd=\$0\.0000.*nothing was sent"):
        await submit(emulator, provider, requests(model), tmp_path, "tiny", max_cost_usd=0.000001)
    assert batches_created(emulator, provider) == before
    ledger = Ledger.load(run_directory(tmp_path, dag_id="d", run_id="tiny"))
    assert ledger is not None
    ceiling = ledger.attempts[1].estimate["ceiling"]
    assert ceiling["batch_usd"] > 0.000001 and ceiling["unpriced_models"] == []
    sources = ceiling["price_sources"].values()
    assert sources and all(source.startswith("genai-prices 0.2") for source in sources)


async def test_a_capped_run_with_an_unpriced_model_is_refused_until_it_has_a_price(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = batches_created(emulator, "openai")
    items = requests("gpt-7-nova")
    refused = r"no price for 'gpt-7-nova'.*BATCH_PROVIDER_PRICE_TABLE"
    with pytest.raises(BudgetExceededError, match=refused):
        await submit(
            emulator, "openai", items, tmp_path, "unpriced", max_cost_usd=100.0, allow_unknown_models=True
        )
    assert batches_created(emulator, "openai") == before

    prices = tmp_path / "prices.json"
    row = {"provider": "openai", "model": "gpt-7-nova", "input": 1.0, "output": 2.0}
    prices.write_text(json.dumps({"rows": [row]}))
    monkeypatch.setenv("BATCH_PROVIDER_PRICE_TABLE", str(prices))
    handle, run_dir = await submit(emulator, "openai", items, tmp_path, "priced", max_cost_usd=100.0)
    assert handle.counts.submitted == 3 and batches_created(emulator, "openai") == before + 1
    estimate = Ledger.load(run_dir).attempts[1].estimate  # type: ignore[union-attr]
    assert estimate["ceiling"]["price_sources"] == {"gpt-7-nova": str(prices)}


async def test_without_a_cap_unpriced_models_are_warned_about_at_submit(
    emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="batch_provider.core.submission"):
        handle, _ = await submit(
            emulator, "openai", requests("gpt-7-nova", 1), tmp_path, "warned", allow_unknown_models=True
        )
    assert handle.counts.submitted == 1
    assert any("No price for gpt-7-nova" in r.getMessage() for r in caplog.records)


async def test_cached_system_blocks_in_extra_are_counted_and_the_cap_holds(
    emulator: Any, tmp_path: Path
) -> None:
    """A cached system prompt given as blocks through ``extra`` (the shape that was not counted)."""
    policy = "Refund policy clause: customers may return goods within thirty days. " * 600  # ~42 kB
    extra = {"system": [{"type": "text", "text": policy, "cache_control": {"type": "ephemeral"}}]}
    items = requests("claude-haiku-4-5", 6, extra=extra)
    before = batches_created(emulator, "anthropic")
    # Priced on the messages alone (about $0.001 at most) a cap of half a cent let this run through.
    with pytest.raises(BudgetExceededError):
        await submit(emulator, "anthropic", items, tmp_path, "under", max_cost_usd=0.005)
    assert batches_created(emulator, "anthropic") == before

    cap = 0.05
    handle, run_dir = await submit(emulator, "anthropic", items, tmp_path, "cached", max_cost_usd=cap)
    estimate = Ledger.load(run_dir).attempts[1].estimate  # type: ignore[union-attr]
    entry = estimate["models"]["claude-haiku-4-5"]
    assert entry["cacheable_tokens"] >= 6 * len(policy) // 4
    async with backend_for("anthropic", emulator) as backend:
        await wait_all(backend, handle, emulator)
        summary = await collect_run(backend, handle, run_dir)
    usage = summary.usage
    actual_input = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    # Measured: 62,208 tokens estimated for 62,178 counted; $0.031 spent under a $0.040 ceiling.
    assert abs(entry["input_tokens"] - actual_input) <= 0.05 * actual_input, (entry, actual_input)
    assert summary.cost.batch_usd <= estimate["ceiling"]["batch_usd"] <= cap
    manifest = json.loads(run_dir.manifest.read_text())
    source = f"genai-prices {version('genai-prices')}"
    assert manifest["cost"]["price_sources"] == {"claude-haiku-4-5": source}


@pytest.mark.parametrize(
    ("provider", "typo", "meant"),
    [("openai", "gpt-4o-mnii", "gpt-4o-mini"), ("anthropic", "claude-haiku-4.5", "claude-haiku-4-5")],
)
async def test_a_near_miss_model_name_is_refused_with_a_suggestion(
    provider: str, typo: str, meant: str, emulator: Any, tmp_path: Path
) -> None:
    before = batches_created(emulator, provider)
    # Every row names the same misspelt model: a task-wide mistake, so the task fails unsent.
    with pytest.raises(TooManyRejectsError) as failed:
        await submit(emulator, provider, requests(typo, 2), tmp_path, "typo")
    assert f"did you mean '{meant}'" in str(failed.value)
    assert batches_created(emulator, provider) == before
    reject = read_lines(run_directory(tmp_path, dag_id="d", run_id="typo").rejects)[0]
    assert reject["row"] == 1 and reject["error"]["field"] == "model"
    assert f"did you mean '{meant}'" in reject["error"]["message"]
    assert "allow_unknown_models" in reject["error"]["message"]


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o-2024-08-06"), ("anthropic", "claude-3-5-haiku-20241022")],
)
async def test_dated_snapshots_of_known_models_are_accepted(
    provider: str, model: str, emulator: Any, tmp_path: Path
) -> None:
    handle, _ = await submit(emulator, provider, requests(model, 1), tmp_path, "dated")
    assert handle.counts.submitted == 1 and handle.counts.rejected == 0


async def test_a_row_over_the_context_window_is_rejected_and_the_good_row_sent(
    emulator: Any, tmp_path: Path
) -> None:
    huge = [Message(role="user", content="x" * 12_000_000)]  # a 12 MB row
    big = LLMRequest(custom_id="big", model="gpt-4o-mini", max_tokens=64, messages=huge).at_row(1)
    good = requests("gpt-4o-mini", 1)[0].model_copy(update={"custom_id": "good"}).at_row(2)
    before = batches_created(emulator, "openai")
    handle, run_dir = await submit(emulator, "openai", [big, good], tmp_path, "size", max_cost_usd=1.0)
    assert handle.counts.submitted == 1 and handle.counts.rejected == 1
    assert batches_created(emulator, "openai") == before + 1
    (reject,) = read_lines(run_dir.rejects)
    message = reject["error"]["message"]
    assert reject["custom_id"] == "big" and reject["row"] == 1 and reject["error"]["field"] == "input"
    assert "3,000,0" in message and "128,000-token context window of gpt-4o-mini" in message
    assert "shorten or split" in message
