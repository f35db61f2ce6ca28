"""Deterministic fake OpenAI answers: chat / responses / completions / embeddings bodies with their
token usage. The shared rules (hash of ``(seed, body)``, token counts, caps, structured output) are
:mod:`batch_provider.emulator.outputs`'.

Invariants:
- An answer depends only on ``(seed, request body)``; :func:`openai_usage` gives exactly the
  tokens of :func:`openai_response` without building it.
- Embeddings: unit-length vectors of ``dimensions`` (when given) else 3072 for
  ``text-embedding-3-large`` and the configured default (1536) otherwise.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from typing import Any, NamedTuple

from ..fake_values import fake_text, json_text, schema_in_text
from ..outputs import body_hash, count_tokens, fit_tokens, openai_prompt_text, short_id


def openai_schema(body: dict[str, Any], prompt: str) -> tuple[dict[str, Any] | None, bool]:
    """(schema, json_mode) for an OpenAI chat/responses body."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema") or {}
            return (js.get("schema") if isinstance(js, dict) else None) or {}, True
        if rf.get("type") == "json_object":
            return schema_in_text(prompt), True
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            return fmt.get("schema") or {}, True
        if fmt.get("type") == "json_object":
            return schema_in_text(prompt), True
    found = schema_in_text(prompt)
    return found, found is not None


class _Generated(NamedTuple):
    """The generated part of a chat / responses / completions answer."""

    text: str
    truncated: bool
    in_tok: int
    tool_call: tuple[str, dict[str, Any]] | None


def _generate(body: dict[str, Any], rng: random.Random) -> _Generated:
    prompt = openai_prompt_text(body)
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or 4096
    cap = max(1, int(cap))
    tool_call = _openai_tool(body)
    schema, json_mode = openai_schema(body, prompt)
    if tool_call is not None:
        text, truncated = fit_tokens(json_text(tool_call[1], rng), cap)
    elif json_mode:
        text, truncated = fit_tokens(json_text(schema, rng), cap)
    else:
        text, truncated = fake_text(rng, cap), False
    return _Generated(text, truncated, count_tokens(prompt), tool_call)


def openai_usage(endpoint: str, body: dict[str, Any], seed: int) -> tuple[int, int]:
    """(input tokens, output tokens) of one successful request: exactly those of
    :func:`openai_response`, without building the response."""
    if endpoint == "/v1/embeddings":
        return _embedding_tokens(body), 0
    g = _generate(body, random.Random(body_hash(seed, body)))
    return g.in_tok, count_tokens(g.text)


def openai_response(
    endpoint: str, body: dict[str, Any], seed: int, created: int, embedding_dim: int
) -> tuple[dict[str, Any], int, int]:
    """(response body, input tokens, output tokens) for one successful request."""
    h = body_hash(seed, body)
    rng = random.Random(h)
    model = str(body.get("model") or "unknown-model")
    if endpoint == "/v1/embeddings":
        return _embeddings(body, rng, model, embedding_dim)
    text, truncated, in_tok, tool_call = _generate(body, rng)
    out_tok = count_tokens(text)
    rid = short_id(h)
    if endpoint == "/v1/responses":
        return (
            _responses_body(body, rid, created, model, text, truncated, in_tok, out_tok, tool_call),
            in_tok,
            out_tok,
        )
    usage = {
        "prompt_tokens": in_tok,
        "completion_tokens": out_tok,
        "total_tokens": in_tok + out_tok,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if endpoint == "/v1/completions":
        choice = {
            "text": text,
            "index": 0,
            "logprobs": None,
            "finish_reason": "length" if truncated else "stop",
        }
        return (
            {
                "id": f"cmpl-{rid}",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
            in_tok,
            out_tok,
        )
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    finish = "length" if truncated else "stop"
    if tool_call is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": f"call_{rid[:24]}",
                "type": "function",
                "function": {"name": tool_call[0], "arguments": text},
            }
        ]
        finish = "length" if truncated else "tool_calls"
    body_out = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }
    return body_out, in_tok, out_tok


def _openai_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, parameters schema) when the request forces or requires a function tool."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice")
    if not tools or choice in (None, "none", "auto"):
        return None

    def spec(t: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        return str(fn.get("name", "tool")), fn.get("parameters") or {}

    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        for t in tools:
            if spec(t)[0] == name:
                return spec(t)
    return spec(tools[0])


def _responses_body(
    body: dict[str, Any],
    rid: str,
    created: int,
    model: str,
    text: str,
    truncated: bool,
    in_tok: int,
    out_tok: int,
    tool_call: tuple[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    if tool_call is not None:
        item: dict[str, Any] = {
            "type": "function_call",
            "id": f"fc_{rid}",
            "call_id": f"call_{rid}",
            "name": tool_call[0],
            "arguments": text,
            "status": "completed",
        }
    else:
        item = {
            "type": "message",
            "id": f"msg_{rid}",
            "status": "incomplete" if truncated else "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if truncated else "completed",
        "completed_at": created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [item],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": in_tok,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out_tok,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tok + out_tok,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def embedding_inputs(body: dict[str, Any]) -> list[Any]:
    inp = body.get("input")
    if isinstance(inp, str):
        return [inp]
    if isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
        return [inp]
    return list(inp) if isinstance(inp, list) else []


def _input_tokens(item: Any) -> int:
    return len(item) if isinstance(item, list) else count_tokens(str(item))


def _embedding_tokens(body: dict[str, Any]) -> int:
    return sum(_input_tokens(x) for x in embedding_inputs(body))


def embedding_dim(body: dict[str, Any], default: int) -> int:
    dims = body.get("dimensions")
    if isinstance(dims, int) and dims > 0:
        return dims
    return 3072 if "3-large" in str(body.get("model", "")) else default


def _embeddings(
    body: dict[str, Any], rng: random.Random, model: str, default_dim: int
) -> tuple[dict[str, Any], int, int]:
    dim = embedding_dim(body, default_dim)
    b64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, item in enumerate(embedding_inputs(body)):
        tokens += _input_tokens(item)
        vec = [rng.random() - 0.5 for _ in range(dim)]
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        vec = [round(v / norm, 7) for v in vec]
        emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return (
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        tokens,
        0,
    )
