"""Deterministic fake outputs: schema-valid JSON, token bounds, determinism (pure functions)."""

from __future__ import annotations

import base64
import json
import random

import jsonschema
import pytest

from batch_provider.emulator import outputs

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
    value = outputs.instance_for_schema(schema, random.Random(seed))
    jsonschema.validate(value, schema)


def test_enum_choice_is_deterministic_and_varies() -> None:
    schema = SCHEMAS[0]
    picks = {outputs.instance_for_schema(schema, random.Random(s))["a"] for s in range(30)}
    assert picks == {"x", "y", "z"}
    assert outputs.instance_for_schema(schema, random.Random(4)) == outputs.instance_for_schema(
        schema, random.Random(4)
    )


def test_schema_found_in_prompt() -> None:
    text = 'Rules: {not json}. Schema: {"type": "object", "properties": {"k": {"type": "string"}}} thanks'
    assert outputs.schema_in_text(text) == {"type": "object", "properties": {"k": {"type": "string"}}}
    assert outputs.schema_in_text('no schema {"a": 1} here') is None


def test_chat_tokens_bounded_and_json_truncated_when_too_long() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "max_completion_tokens": 3}
    resp, in_tok, out_tok = outputs.openai_response("/v1/chat/completions", body, 0, 0, 1536)
    assert in_tok == 100 and out_tok <= 3
    assert resp["usage"]["completion_tokens"] == out_tok
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(30)}}
    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "b", "schema": big}}
    resp, _, out_tok = outputs.openai_response("/v1/chat/completions", body, 0, 0, 1536)
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
    resp, tokens, _ = outputs.openai_response("/v1/embeddings", body, 0, 0, 1536)
    assert tokens == 2 and len(resp["data"]) == 2
    assert len(base64.b64decode(resp["data"][0]["embedding"])) == 3072 * 4
    json.dumps(resp)
