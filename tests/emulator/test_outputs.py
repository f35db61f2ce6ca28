"""Deterministic fake outputs: schema-valid JSON, token bounds, determinism (pure functions)."""

from __future__ import annotations

import base64
import json
import random

import jsonschema
import pytest

from batch_provider.emulator import fake_values, outputs
from batch_provider.emulator.openai import answers
from batch_provider.emulator.openai import outputs as openai_outputs

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", "y", "z"]}}, "required": ["a"]},
    {
        "type": "object",
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"n": {"type": "integer", "exclusiveMinimum": 5, "maximum": 9}},
                "required": ["n"],
            }
        },
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2},
            "maybe": {"type": ["string", "null"], "format": "date"},
            "ratio": {"type": "number", "minimum": -1, "maximum": -0.5},
            "ok": {"type": "boolean"},
            "const": {"const": 3},
            "choice": {"oneOf": [{"type": "null"}, {"type": "string", "minLength": 12, "maxLength": 20}]},
        },
        "required": ["items", "maybe", "ratio", "ok", "const", "choice"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1, "maxItems": 1},
    {"properties": {"nested": {"properties": {"deep": {"type": "integer"}}}}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", range(5))
def test_instances_validate(schema: dict, seed: int) -> None:
    value = fake_values.instance_for_schema(schema, random.Random(seed))
    jsonschema.validate(value, schema)


def test_enum_choice_is_deterministic_and_varies() -> None:
    schema = SCHEMAS[0]
    picks = {fake_values.instance_for_schema(schema, random.Random(s))["a"] for s in range(30)}
    assert picks == {"x", "y", "z"}
    assert fake_values.instance_for_schema(schema, random.Random(4)) == fake_values.instance_for_schema(
        schema, random.Random(4)
    )


def test_schema_found_in_prompt() -> None:
    text = 'Rules: {not json}. Schema: {"type": "object", "properties": {"k": {"type": "string"}}} thanks'
    assert fake_values.schema_in_text(text) == {"type": "object", "properties": {"k": {"type": "string"}}}
    assert fake_values.schema_in_text('no schema {"a": 1} here') is None


def test_chat_tokens_bounded_and_json_truncated_when_too_long() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "max_completion_tokens": 3}
    resp, in_tok, out_tok = answers.openai_response("/v1/chat/completions", body, 0, 0, 1536)
    assert in_tok == 100 and out_tok <= 3
    assert resp["usage"]["completion_tokens"] == out_tok
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(30)}}
    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "b", "schema": big}}
    resp, _, out_tok = answers.openai_response("/v1/chat/completions", body, 0, 0, 1536)
    assert out_tok <= 3 and resp["choices"][0]["finish_reason"] == "length"


def test_anthropic_message_usage_and_seed() -> None:
    params = {
        "model": "claude-x",
        "max_tokens": 50,
        "system": "Be terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }
    a, b = outputs.anthropic_message(params, 1), outputs.anthropic_message(params, 1)
    assert a == b
    assert outputs.anthropic_message(params, 2)["content"] != a["content"]
    assert a["usage"]["input_tokens"] == outputs.count_tokens("Be terse.\nhello there")
    assert 0 < a["usage"]["output_tokens"] <= 50 and a["stop_reason"] == "end_turn"


def test_embeddings_base64_and_model_default_dims() -> None:
    body = {"model": "text-embedding-3-large", "input": ["a", "bb"], "encoding_format": "base64"}
    resp, tokens, _ = answers.openai_response("/v1/embeddings", body, 0, 0, 1536)
    assert tokens == 2 and len(resp["data"]) == 2
    assert len(base64.b64decode(resp["data"][0]["embedding"])) == 3072 * 4
    json.dumps(resp)


def _reference_fake_text(rng: random.Random, max_tokens: int) -> str:
    """fake_text as first written, with ``rng.choice``."""
    target = max(1, min(max_tokens, 6 + rng.randrange(40)))
    limit = target * 4
    words: list[str] = []
    length = 0
    while length < limit - 8:
        w = rng.choice(fake_values._WORDS)
        words.append(w)
        length += len(w) + 1
    text = " ".join(words)[:limit].strip()
    text = (text[:1].upper() + text[1:] + ".") if len(text) + 1 <= limit else text[:limit]
    return text or "ok"


def test_fake_text_draws_like_random_choice() -> None:
    for seed in range(3000):
        a, b = random.Random(seed), random.Random(seed)
        assert fake_values.fake_text(a, seed % 60 + 1) == _reference_fake_text(b, seed % 60 + 1)
        assert a.random() == b.random()  # the generator is left in the same state


USAGE_BODIES = [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi " * 30}]}),
    (
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "classify"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMAS[1]}},
            "max_tokens": 20,
        },
    ),
    ("/v1/responses", {"model": "m", "input": "hello", "instructions": "be brief", "max_output_tokens": 7}),
    ("/v1/completions", {"model": "m", "prompt": "once upon", "max_tokens": 5}),
    ("/v1/embeddings", {"model": "e", "input": ["a", [1, 2, 3], "ccc"], "dimensions": 4}),
]


@pytest.mark.parametrize(("endpoint", "body"), USAGE_BODIES)
def test_usage_equals_the_responses_usage(endpoint: str, body: dict) -> None:
    _, in_tok, out_tok = answers.openai_response(endpoint, body, 3, 0, 16)
    assert answers.openai_usage(endpoint, body, 3) == (in_tok, out_tok)


@pytest.mark.parametrize(("endpoint", "body"), USAGE_BODIES)
def test_output_lines_are_compact_json_of_themselves(tmp_path, endpoint: str, body: dict) -> None:
    """Whichever encoder writes a line (msgspec or json), its bytes are those json.dumps gives."""
    src = tmp_path / "in.jsonl"
    lines = [
        {"custom_id": f"c-{i}-é\u2028", "method": "POST", "url": endpoint, "body": {**body, "user": f"u{i}"}}
        for i in range(40)
    ]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for kind, fail in (("output", {}), ("error", {i: (500, "boom ✓", None) for i in range(0, 40, 3)})):
        job = openai_outputs.OutputJob(
            batch_id="batch_x",
            endpoint=endpoint,
            kind=kind,
            done=30,
            fail=fail,
            unrun_error=("batch_expired", "not run"),
            t_v=1.7e9,
            step=0.5,
            seed=3,
            embedding_dim=16,
            shuffle=False,
        )
        target = tmp_path / f"{kind}.jsonl"
        openai_outputs.write_file(job, src, target)
        written = target.read_bytes().splitlines(keepends=True)
        assert len(written) == (30 if kind == "output" else 10 + 10)
        for raw in written:
            again = json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False) + "\n"
            assert raw == again.encode()
