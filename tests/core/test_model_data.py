"""Model names, offline price data, token counting and the output basis: the rules, one by one."""

from __future__ import annotations

import base64
import struct
import zlib
from datetime import UTC, datetime

import pytest
from genai_prices import data_snapshot

from batch_provider.core.catalog import is_known_model, unknown_model_reason
from batch_provider.core.estimate import CostEstimator
from batch_provider.core.model_names import name_candidates
from batch_provider.core.models import ImagePart, LLMRequest, Message, Provider, TextPart
from batch_provider.core.pricing import default_price_table
from batch_provider.core.tokens import image_tokens, request_tokens


@pytest.mark.parametrize(
    ("provider", "model", "base"),
    [
        (Provider.OPENAI, "gpt-4o-2024-08-06", "gpt-4o"),
        (Provider.OPENAI, "ft:gpt-4o-mini-2024-07-18:acme::abc123", "gpt-4o-mini"),
        (Provider.ANTHROPIC, "claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        (Provider.ANTHROPIC, "claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        (Provider.GEMINI, "models/gemini-2.5-flash-001", "gemini-2.5-flash"),
        (Provider.GEMINI, "gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"),
        (Provider.BEDROCK, "us.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-haiku-4-5"),
        (
            Provider.BEDROCK,
            "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0",
            "amazon.nova-lite",
        ),
    ],
)
def test_snapshot_rules_reach_the_base_name_and_the_model_is_known(
    provider: Provider, model: str, base: str
) -> None:
    assert name_candidates(provider, model)[-1] == base
    assert is_known_model(provider, model)


@pytest.mark.parametrize(
    ("provider", "model", "meant"),
    [
        (Provider.OPENAI, "gpt-4o-mnii", "gpt-4o-mini"),
        (Provider.ANTHROPIC, "claude-haiku-4.5", "claude-haiku-4-5"),
        (Provider.GEMINI, "gemini-2.5-flsh", "gemini-2.5-flash"),
        (Provider.BEDROCK, "anthropic.claude-haiku-4.5-v1:0", "anthropic.claude-haiku-4-5"),
        (Provider.OPENAI, "gpt-4o-mini-2024-13", None),
    ],
)
def test_near_misses_are_unknown_and_the_reason_suggests_the_name(
    provider: Provider, model: str, meant: str | None
) -> None:
    assert not is_known_model(provider, model)
    reason = unknown_model_reason(provider, model)
    assert model in reason and "allow_unknown_models=True" in reason
    if meant is not None:
        assert f"'{meant}'" in reason.split("did you mean", 1)[1]


def test_compatible_services_and_arns_without_a_model_name_are_not_checked() -> None:
    assert is_known_model(Provider.OPENAI_COMPATIBLE, "llama-3.3-70b-local")
    profile = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"
    assert is_known_model(Provider.BEDROCK, profile)


def test_prices_come_from_the_bundled_data_even_when_another_snapshot_is_installed() -> None:
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        row = default_price_table().dated(datetime(2026, 12, 1, tzinfo=UTC)).lookup("openai", "gpt-4o-mini")
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert row is not None and (row.input, row.output) == (0.15, 0.6)
    assert row.source is not None and row.source.startswith("genai-prices ")


def test_prices_by_date_and_batch_cache_reads_at_their_own_rate() -> None:
    table = default_price_table()
    after = table.dated(datetime(2026, 12, 1, tzinfo=UTC)).lookup("openai", "gpt-4o-mini")
    before = table.dated(datetime(2026, 9, 1, tzinfo=UTC)).lookup("openai", "gpt-4o-mini")
    assert after is not None and before is not None
    # From 2026-10-14 genai-prices lists OpenAI batch rates: cache reads are not discounted again.
    assert after.batch_discount == 0.5 and after.batch_cache_read_discount == 1.0
    assert before.batch_discount == 0.5 and before.batch_cache_read_discount is None
    tiered = table.lookup("gemini", "models/gemini-2.5-pro")
    assert tiered is not None and tiered.long_context is not None
    assert tiered.long_context.above_input_tokens == 200_000


def _png(width: int, height: int) -> str:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return base64.b64encode(raw).decode()


def test_images_are_counted_by_each_providers_rule() -> None:
    size = (1024, 1024)
    assert image_tokens(Provider.OPENAI, size) == 85 + 170 * 4  # scaled to 768², four 512 tiles
    assert image_tokens(Provider.ANTHROPIC, size) == 1024 * 1024 // 750
    assert image_tokens(Provider.GEMINI, size) == 258 * 4
    assert image_tokens(Provider.GEMINI, (300, 200)) == 258
    image = ImagePart(data=_png(*size), media_type="image/png")
    content = [TextPart(text="what is it"), image]
    request = LLMRequest(custom_id="i", model="m", messages=[Message(role="user", content=content)])
    assert request_tokens(Provider.ANTHROPIC, request).input == 3 + 1398
    linked = [Message(role="user", content=[ImagePart(url="https://x/y.png")])]
    by_url = request.model_copy(update={"messages": linked})
    assert request_tokens(Provider.ANTHROPIC, by_url).input == 1600, "unknown size: the maximum"


def test_tools_schema_extra_and_native_bodies_are_counted() -> None:
    plain = LLMRequest(custom_id="a", model="m", messages=[Message(role="user", content="hi")])
    tools = [{"name": "lookup", "description": "d" * 400, "input_schema": {"type": "object"}}]
    with_tools = plain.model_copy(update={"extra": {"tools": tools}})
    with_schema = plain.model_copy(update={"response_schema": {"type": "object", "description": "s" * 400}})
    body = {"model": "m", "messages": [{"role": "user", "content": "y" * 800}]}
    native = LLMRequest(custom_id="n", native=body)
    base = request_tokens(Provider.ANTHROPIC, plain).input
    assert request_tokens(Provider.ANTHROPIC, with_tools).input > base + 100
    assert request_tokens(Provider.ANTHROPIC, with_schema).input > base + 100
    assert request_tokens(Provider.ANTHROPIC, native).input >= 200


def test_first_run_output_estimate_says_its_basis() -> None:
    estimator = CostEstimator("openai")
    tokens = request_tokens(Provider.OPENAI, LLMRequest(custom_id="a", model="gpt-4o-mini", input="x"))
    estimator.add_tokens("gpt-4o-mini", tokens, 1000, embedding=False, schema_tokens=40)
    estimator.add_tokens("gpt-4.1-mini", tokens, 1000, embedding=False)
    estimate = estimator.finish(default_price_table())
    assert estimate.models["gpt-4o-mini"].basis == "schema"
    assert estimate.models["gpt-4o-mini"].output_tokens_expected == 40
    assert estimate.models["gpt-4.1-mini"].basis == "default"
    assert estimate.models["gpt-4.1-mini"].output_tokens_expected == 500
