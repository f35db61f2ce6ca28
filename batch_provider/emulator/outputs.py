"""Deterministic fake model outputs.

Invariants:
- An output depends only on ``(seed, request body)``: the same body gives the same output in any
  batch, any process, any order (``random.Random`` seeded with an int is stable across runs).
- Token counts: ``ceil(chars / 4)`` of the prompt text (system, messages, instructions, input;
  at least 1) for input; the same rule over the generated text for output. Output never exceeds
  ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``: plain text is generated to
  fit; structured JSON that would not fit is cut and reported as truncated (``finish_reason:
  "length"`` / ``stop_reason: "max_tokens"`` / response ``status: "incomplete"``).
- Structured output: when the request carries a JSON schema (OpenAI ``response_format``
  json_schema, Responses ``text.format`` json_schema, Anthropic ``output_format`` /
  ``output_config.format``, a forced or offered tool, or a JSON Schema object written in the
  prompt), the text is JSON valid against that schema (objects, strings with enum/format/length,
  numbers and integers with bounds, booleans, arrays with item counts, $ref/$defs, anyOf/oneOf,
  nullable types). ``json_object`` mode without a schema yields a small JSON object.
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

_VOCABULARY = (
    "the model reviewed input and found clear signal with modest noise overall result is "
    "positive negative neutral summary notes that key points include data quality timing scope risk "
    "value customer request response shows strong evidence for this label given context above"
)
_WORDS = tuple(_VOCABULARY.split())
_WORD_BITS = len(_WORDS).bit_length()


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


# ----------------------------------------------------------------------------- text and JSON


def fake_text(rng: random.Random, max_tokens: int) -> str:
    target = max(1, min(max_tokens, 6 + rng.randrange(40)))
    limit = target * 4
    words: list[str] = []
    length = 0
    # ``rng.choice(_WORDS)`` inlined (same draws: CPython's choice is _randbelow by getrandbits).
    getrandbits, n, bits = rng.getrandbits, len(_WORDS), _WORD_BITS
    while length < limit - 8:
        r = getrandbits(bits)
        while r >= n:
            r = getrandbits(bits)
        w = _WORDS[r]
        words.append(w)
        length += len(w) + 1
    text = " ".join(words)[:limit].strip()
    text = (text[:1].upper() + text[1:] + ".") if len(text) + 1 <= limit else text[:limit]
    return text or "ok"


def instance_for_schema(schema: Any, rng: random.Random, root: Any = None, depth: int = 0) -> Any:
    """A JSON value valid against the (simple) JSON schema ``schema``."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None if depth > 12 else "value"
    if "$ref" in schema:
        return instance_for_schema(_resolve_ref(root, schema["$ref"]), rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return instance_for_schema((non_null or options)[0], rng, root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged = {
                    **merged,
                    **part,
                    "properties": {**merged.get("properties", {}), **part.get("properties", {})},
                }
        return instance_for_schema(merged, rng, root, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if non_null else "null"
    if typ is None:
        typ = "object" if "properties" in schema else ("array" if "items" in schema else "string")
    if typ == "object":
        props = schema.get("properties") or {}
        return {k: instance_for_schema(v, rng, root, depth + 1) for k, v in props.items()}
    if typ == "array":
        lo = min(int(schema.get("minItems", 1)), 1000)
        hi = int(schema.get("maxItems", max(lo, 3)))
        n = rng.randint(lo, max(lo, min(hi, lo + 2)))
        return [instance_for_schema(schema.get("items", {}), rng, root, depth + 1) for _ in range(n)]
    if typ == "integer":
        lo, hi = _bounds(schema, 0, 100)
        return rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi)))
    if typ == "number":
        lo, hi = _bounds(schema, 0.0, 1.0)
        return round(lo + (hi - lo) * rng.random(), 3) if hi > lo else lo
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "null":
        return None
    return _fake_string(schema, rng)


def _bounds(schema: dict[str, Any], lo: float, hi: float) -> tuple[float, float]:
    step = 1 if schema.get("type") == "integer" else 1e-3
    if "minimum" in schema:
        lo = float(schema["minimum"])
    elif "exclusiveMinimum" in schema:
        lo = float(schema["exclusiveMinimum"]) + step
    if "maximum" in schema:
        hi = float(schema["maximum"])
    elif "exclusiveMaximum" in schema:
        hi = float(schema["exclusiveMaximum"]) - step
    return lo, max(lo, hi)


def _fake_string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
    if fmt == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "email":
        return f"user{rng.randrange(1000)}@example.com"
    if fmt == "uuid":
        return f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
    if fmt in ("uri", "url"):
        return f"https://example.com/{rng.randrange(1000)}"
    lo = min(int(schema.get("minLength", 0)), 100_000)
    hi = int(schema.get("maxLength", 10_000))
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    if len(words) < lo:
        words = (words + " ") * (lo // (len(words) + 1) + 1)
    return words[:hi] if hi >= lo else words[:lo]


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def _looks_like_schema(obj: Any) -> bool:
    return isinstance(obj, dict) and (
        isinstance(obj.get("properties"), dict)
        or (obj.get("type") in ("object", "array") and "$schema" in obj)
    )


def schema_in_text(text: str) -> dict[str, Any] | None:
    """The first JSON Schema object written in a prompt, if any (bounded scan)."""
    if "{" not in text or "properties" not in text:
        return None
    decoder = json.JSONDecoder()
    start, tries = text.find("{"), 0
    while start != -1 and tries < 64 and start < 500_000:
        tries += 1
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for cand in (obj, obj.get("schema"), obj.get("json_schema")):
                if _looks_like_schema(cand):
                    return cand
                if isinstance(cand, dict) and _looks_like_schema(cand.get("schema")):
                    return cand["schema"]
        start = text.find("{", start + 1)
    return None


def _render(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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


def _json_text(schema: dict[str, Any] | None, rng: random.Random) -> str:
    if schema:
        return _render(instance_for_schema(schema, rng))
    return _render({"result": fake_text(rng, 12), "score": round(rng.random(), 3)})


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
        text, truncated = _fit(_json_text(tool_call[1], rng), cap)
    elif json_mode:
        text, truncated = _fit(_json_text(schema, rng), cap)
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
        text, truncated = _fit(_json_text(tool[1], rng), cap)
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
            text, truncated = _fit(_json_text(schema, rng), cap)
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
