"""Costs match a hand calculation from the price table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch_provider.core.models import Usage
from batch_provider.core.pricing import Cost, CostTally, default_price_table, load_price_table


def test_batch_cost_and_savings_by_hand() -> None:
    table = default_price_table()
    usage = Usage(input_tokens=120_000, output_tokens=30_000, cache_read_tokens=10_000)
    cost = table.cost("openai", "gpt-6-luna-2026-09-22", usage)
    standard = (120_000 * 0.10 + 30_000 * 0.50 + 10_000 * 0.01) / 1e6
    assert cost.standard_usd == pytest.approx(standard)
    assert cost.batch_usd == pytest.approx(standard / 2)
    assert cost.savings_usd == pytest.approx(standard / 2)


def test_anthropic_cache_multipliers_and_long_context_tier() -> None:
    table = default_price_table()
    usage = Usage(input_tokens=1_000, output_tokens=100, cache_read_tokens=2_000, cache_write_tokens=500)
    cost = table.cost("anthropic", "claude-sonnet-5-5", usage)
    # genai-prices 0.2.3: $2 input, $10 output, $0.10 cache read, $2.50 cache write per 1M tokens.
    standard = (1_000 * 2 + 100 * 10 + 2_000 * 0.10 + 500 * 2.50) / 1e6
    assert cost.standard_usd == pytest.approx(standard)
    long = table.cost("anthropic", "claude-haiku-5-5", Usage(input_tokens=150_000, output_tokens=1_000))
    assert long.standard_usd == pytest.approx((150_000 * 0.5 + 1_000 * 2.5) / 1e6)


def test_unknown_model_is_unpriced_not_guessed() -> None:
    cost = default_price_table().cost("openai", "some-new-model", Usage(input_tokens=10, output_tokens=5))
    assert cost.batch_usd == 0 and cost.standard_usd == 0
    assert cost.unpriced_tokens == 15 and cost.unpriced_models == ["some-new-model"]


def test_user_override_wins(tmp_path: Path) -> None:
    override = tmp_path / "prices.json"
    override.write_text(
        json.dumps({"rows": [{"provider": "openai", "model": "gpt-6-luna", "input": 1.0, "output": 2.0}]})
    )
    cost = load_price_table(override).cost("openai", "gpt-6-luna", Usage(input_tokens=1_000_000))
    assert cost.standard_usd == pytest.approx(1.0) and cost.batch_usd == pytest.approx(0.5)


def test_bedrock_inference_profiles_and_snapshots_match_the_base_model() -> None:
    table = default_price_table()
    row = table.lookup("bedrock", "us.anthropic.claude-haiku-4-5-20251001-v1:0")
    assert row is not None and row.model == "anthropic.claude-haiku-4-5"
    assert table.lookup("bedrock", "meta.llama4-scout-17b-instruct-v1:0") is None


def test_environment_override_file_wins_without_a_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    override = tmp_path / "ours.json"
    override.write_text(
        json.dumps({"rows": [{"provider": "openai", "model": "gpt-7-nova", "input": 3.0, "output": 6.0}]})
    )
    monkeypatch.setenv("BATCH_PROVIDER_PRICE_TABLE", str(override))
    table = default_price_table()
    assert table.lookup("openai", "gpt-7-nova") is not None
    assert table.lookup("openai", "gpt-6-luna") is not None, "packaged rows stay"
    monkeypatch.delenv("BATCH_PROVIDER_PRICE_TABLE")
    assert default_price_table().lookup("openai", "gpt-7-nova") is None


def test_cost_tally_equals_the_sum_of_per_request_costs() -> None:
    table = default_price_table()
    requests = [  # both sides of the long-context tiers, cache tokens, unknown and missing models
        ("claude-sonnet-5-5", Usage(input_tokens=1_000, output_tokens=100, cache_read_tokens=2_000)),
        ("claude-sonnet-5-5", Usage(input_tokens=300_000, output_tokens=900, cache_write_tokens=5)),
        ("claude-haiku-5-5", Usage(input_tokens=150_000, output_tokens=1_000)),
        ("claude-haiku-5-5", Usage(input_tokens=10, output_tokens=3)),
        ("not-in-the-table", Usage(input_tokens=7, output_tokens=2)),
        (None, Usage(input_tokens=1, output_tokens=1)),
    ]
    tally = CostTally(table, "anthropic")
    expected = Cost()
    for model, usage in requests:
        tally.add(model, usage)
        expected = expected + table.cost("anthropic", model, usage)
    assert tally.cost.standard_usd == pytest.approx(expected.standard_usd, rel=1e-12)
    assert tally.cost.batch_usd == pytest.approx(expected.batch_usd, rel=1e-12)
    assert tally.cost.unpriced_tokens == expected.unpriced_tokens == 11
    assert tally.cost.unpriced_models == expected.unpriced_models == ["(none)", "not-in-the-table"]
    assert tally.usage == sum((u for _, u in requests), Usage())
