"""Deterministic fake model outputs shared by every provider: body hashes and ids, the token rule,
prompt text, and Anthropic messages (also what Bedrock's and Gemini's faces build on). OpenAI
chat / responses / completions / embeddings bodies are :mod:`.openai.answers`'. The prose and JSON
in them come from :mod:`.fake_values`.

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
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

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


def fit_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut text to ``max_tokens`` (chars/4 rule). Returns (text, truncated)."""
    limit = max(1, max_tokens) * 4
    return (text, False) if len(text) <= limit else (text[:limit], True)


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
        text, truncated = fit_tokens(json_text(tool[1], rng), cap)
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
            text, truncated = fit_tokens(json_text(schema, rng), cap)
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
