"""Deterministic fake model outputs: OpenAI chat / responses / completions / embeddings bodies and
Anthropic messages. The prose and JSON in them come from :mod:`.fake_values`.

Invariants:
- An output depends only on ``(seed, request body)``: the same body gives the same output in any
  batch, any process, any order (``random.Random`` seeded with an int is stable across runs).
  Only the prompt-cache fields of the usage also depend on the earlier requests of the same
  batch (:mod:`.prompt_cache`, applied by each provider's result writer).
- Token counts: ``ceil(chars / 4)`` of the prompt text (system, messages, instructions, input;
  at least 1) for input; the same rule over the generated text for output. Output never exceeds
  ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``: plain text is generated to
  fit; structured JSON that would not fit is cut and reported as truncated (``finish_reason:
  "length"`` / ``stop_reason: "max_tokens"`` / response ``status: "incomplete"``).
- Structured output: when the request carries a JSON schema (OpenAI ``response_format``
  json_schema, Responses ``text.format`` json_schema, Anthropic ``output_format`` /
  ``output_config.format``, a forced or offered tool, or a JSON Schema object written in the
  prompt), the text is JSON valid against that schema (:func:`.fake_values.instance_for_schema`).
  ``json_object`` mode without a schema yields a small JSON object.
- Embeddings: unit-length vectors of ``dimensions`` (when given) else 3072 for
  ``text-embedding-3-large`` and the configured default (1536) otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, NamedTuple

from .fake_values import fake_text, json_text, schema_in_text

# One encoder for every hash: json.dumps would build a new one per call.
_HASH_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def body_hash(seed: int, body: Any) -> int:
    """A stable 64-bit hash of ``(seed, body)``: of ``body``'s sorted, compact JSON text."""
    raw = encode_basestring(body) if isinstance(body, str) else _HASH_ENCODER.encode(body)
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{raw}".encode(), digest_size=8).digest(), "big")


def short_id(h: int, n: int = 24) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    x = h or 1
    out = []
    for _ in range(n):
        x, r = divmod(x * 6364136223846793005 + 1442695040888963407, 62)
        x &= (1 << 64) - 1
        out.append(alphabet[r])
    return "".join(out)


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict):
                if isinstance(p.get("text"), str):
                    parts.append(p["text"])
                elif "content" in p:
                    parts.append(_content_text(p["content"]))
        return "\n".join(parts)
    return str(content)


def openai_prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    if isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            parts.append(_content_text(m.get("content")))
    inp = body.get("input")
    if isinstance(inp, str):
        parts.append(inp)
    elif isinstance(inp, list):
        for item in inp:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict):
                parts.append(_content_text(item.get("content", item.get("text"))))
    if isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\n".join(parts)


def anthropic_prompt_text(params: dict[str, Any]) -> str:
    parts = [_content_text(params.get("system"))]
    for m in params.get("messages") or []:
        if isinstance(m, dict):
            parts.append(_content_text(m.get("content")))
    return "\n".join(p for p in parts if p)


# ----------------------------------------------------------------------------- token caps


def _fit(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut text to ``max_tokens`` (chars/4 rule). Returns (text, truncated)."""
    limit = max(1, max_tokens) * 4
    return (text, False) if len(text) <= limit else (text[:limit], True)


# ----------------------------------------------------------------------------- OpenAI


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
        text, truncated = _fit(json_text(tool_call[1], rng), cap)
    elif json_mode:
        text, truncated = _fit(json_text(schema, rng), cap)
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


# ----------------------------------------------------------------------------- Anthropic


def anthropic_message(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """A ``message`` object (with usage, ``service_tier: "batch"``) for valid ``params``."""
    h = body_hash(seed, params)
    rng = random.Random(h)
    prompt = anthropic_prompt_text(params)
    in_tok = count_tokens(prompt)
    cap = max(1, int(params.get("max_tokens") or 1))
    tool = _anthropic_tool(params)
    schema = _anthropic_schema(params, prompt)
    stop = "end_turn"
    if tool is not None:
        text, truncated = _fit(json_text(tool[1], rng), cap)
        content: list[dict[str, Any]]
        if truncated:
            content = [{"type": "text", "text": text}]
            stop = "max_tokens"
        else:
            content = [
                {"type": "tool_use", "id": f"toolu_{short_id(h)}", "name": tool[0], "input": json.loads(text)}
            ]
            stop = "tool_use"
    else:
        if schema is not None:
            text, truncated = _fit(json_text(schema, rng), cap)
        else:
            text, truncated = fake_text(rng, cap), False
        stop = "max_tokens" if truncated else "end_turn"
        content = [{"type": "text", "text": text}]
    return {
        "id": f"msg_01{short_id(h, 22)}",
        "type": "message",
        "role": "assistant",
        "model": str(params.get("model")),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": in_tok,
            "output_tokens": count_tokens(text),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "batch",
        },
    }


def _anthropic_schema(params: dict[str, Any], prompt: str) -> dict[str, Any] | None:
    for fmt in (
        params.get("output_format"),
        (params.get("output_config") or {}).get("format")
        if isinstance(params.get("output_config"), dict)
        else None,
    ):
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return fmt.get("schema") or {}
    return schema_in_text(prompt)


def _anthropic_tool(params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict) and "input_schema" in t]
    choice = params.get("tool_choice") or {}
    ctype = choice.get("type") if isinstance(choice, dict) else None
    if not tools or ctype == "none":
        return None
    if ctype == "tool":
        for t in tools:
            if t.get("name") == choice.get("name"):
                return str(t["name"]), t["input_schema"]
    return str(tools[0].get("name", "tool")), tools[0]["input_schema"]
