"""What a Gemini batch answers: deterministic fake ``GenerateContentResponse`` bodies, per-request
errors, its inlined responses and the lines of its responses file.

Every response reuses the Anthropic generator (:func:`.outputs.anthropic_message`) on an
equivalent request, so the rules match the other providers: deterministic in (seed, request),
tokens by the chars/4 rule, capped by ``maxOutputTokens``, JSON valid against the schema when
``generationConfig.responseMimeType`` is ``application/json``.

Invariants:
- :func:`request_problem` and :func:`generate` agree: a request without a problem always gets a
  response.
- ``promptTokenCount`` includes ``cachedContentTokenCount`` (as Gemini reports it); a request
  naming ``cachedContent`` reports half its prompt tokens as cached.
- Results cover the first ``done`` requests in input order; only a shuffle (seeded by the seed and
  the batch id) changes their order. Item errors are ``google.rpc.Status`` objects (gRPC ``code``,
  ``message``), as the SDK's ``JobError`` reads them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import outputs
from ..faults import BatchFaults
from ..invalid_answers import corrupt_anthropic, invalid_kind
from ..prompt_cache import PromptCache, gemini_usage

ITEM_STATUS = {
    400: ("INVALID_ARGUMENT", 3),
    422: ("INVALID_ARGUMENT", 3),
    429: ("RESOURCE_EXHAUSTED", 8),
    500: ("INTERNAL", 13),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
    529: ("UNAVAILABLE", 14),
}
"""Injected HTTP-style item status → (canonical status, gRPC code of the ``google.rpc.Status``)."""
CHUNK = 1 << 20
T = TypeVar("T")
DEFAULT_MAX_OUTPUT_TOKENS = 8192
_DEFAULT_JSON_SCHEMA = {
    "type": "object",
    "properties": {"result": {"type": "string"}, "score": {"type": "number"}},
}


def _texts(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return "\n".join(str(p.get("text") or "") for p in parts if isinstance(p, dict) and "text" in p)


def prompt_text(request: dict[str, Any]) -> str:
    pieces = [_texts((request.get("systemInstruction") or {}).get("parts"))]
    for content in request.get("contents") or []:
        if isinstance(content, dict):
            pieces.append(_texts(content.get("parts")))
    return "\n".join(p for p in pieces if p)


def _lower_types(schema: Any) -> Any:
    """An OpenAPI-style ``responseSchema`` (``"type": "OBJECT"``) as a JSON schema."""
    if isinstance(schema, list):
        return [_lower_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _lower_types(v) for k, v in schema.items()}
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
    return out


def response_schema(request: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the answer must follow, or None for plain text."""
    config = request.get("generationConfig") or {}
    if config.get("responseMimeType") != "application/json":
        return None
    for name in ("responseJsonSchema", "_responseJsonSchema"):
        if isinstance(config.get(name), dict):
            return config[name]
    if isinstance(config.get("responseSchema"), dict):
        return _lower_types(config["responseSchema"])
    return _DEFAULT_JSON_SCHEMA


def request_problem(request: Any) -> str | None:
    """Why the model would refuse ``request`` (a per-request 400 INVALID_ARGUMENT), or None."""
    if not isinstance(request, dict):
        return "request must be a GenerateContentRequest object"
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    config = request.get("generationConfig") or {}
    if not isinstance(config, dict):
        return "* GenerateContentRequest.generation_config: must be an object"
    cap = config.get("maxOutputTokens")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        return "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
    return None


def generate(
    request: dict[str, Any],
    model: str,
    seed: int,
    cache: PromptCache | None = None,
    invalid: str | None = None,
) -> dict[str, Any]:
    """The ``GenerateContentResponse`` of a request without a problem; with ``cache``, a shared
    system instruction read from the batch's implicit cache is in ``cachedContentTokenCount``;
    with ``invalid`` (a kind of :mod:`.invalid_answers`), its JSON answer is made invalid."""
    config = request.get("generationConfig") or {}
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": int(config.get("maxOutputTokens") or DEFAULT_MAX_OUTPUT_TOKENS),
        "messages": [{"role": "user", "content": prompt_text(request) or "(empty)"}],
    }
    schema = response_schema(request)
    if schema is not None:
        params["output_format"] = {"type": "json_schema", "schema": schema}
    message = corrupt_anthropic(outputs.anthropic_message(params, seed), invalid)
    text = "".join(block.get("text") or "" for block in message["content"] if block.get("type") == "text")
    prompt_tokens = message["usage"]["input_tokens"]
    out_tokens = message["usage"]["output_tokens"]
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": out_tokens,
        "totalTokenCount": prompt_tokens + out_tokens,
    }
    if request.get("cachedContent"):
        usage["cachedContentTokenCount"] = prompt_tokens // 2
    gemini_usage(cache, request, usage)
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "MAX_TOKENS" if message["stop_reason"] == "max_tokens" else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": usage,
        "modelVersion": model.removeprefix("models/"),
        "responseId": message["id"].removeprefix("msg_01")[:20],
    }


# ----------------------------------------------------------------------------- a batch's results


@dataclass(frozen=True)
class Results:
    """Which results of a batch are rendered, and how."""

    fail: Mapping[int, tuple[int, str]]
    """Index → (HTTP code, message) of the requests that end with an error."""
    done: int
    """Requests ``0..done-1`` have a result."""
    model: str
    seed: int
    batch_id: str
    shuffle: bool
    """Shuffle the results, seeded by (seed, batch id)."""
    faults: BatchFaults | None = None
    """The batch's fault directives (for ``invalid_output``)."""

    def items(self, entries: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(entry, ``{"response"}`` or ``{"error"}``) of the first ``done`` entries, in input order."""
        cache = PromptCache()
        for idx, entry in enumerate(entries):
            if idx >= self.done:
                break
            failure = self.fail.get(idx)
            if failure is not None:
                code, message = failure
                yield entry, {"error": {"code": ITEM_STATUS[code][1], "message": message}}
            else:
                key = str(entry.get("key") or (entry.get("metadata") or {}).get("key") or idx)
                invalid = invalid_kind(self.seed, key, self.faults)
                yield entry, {"response": generate(entry["request"], self.model, self.seed, cache, invalid)}

    def order(self, items: list[T]) -> list[T]:
        """``items`` (the results, in input order), shuffled in place when ``shuffle``."""
        if self.shuffle:
            random.Random(f"{self.seed}:{self.batch_id}").shuffle(items)
        return items


def inlined_responses(entries: Iterable[dict[str, Any]], results: Results) -> list[dict[str, Any]]:
    """``output.inlinedResponses`` of an inline batch: each result with its request's ``metadata``."""
    out: list[dict[str, Any]] = []
    for entry, item in results.items(entries):
        if entry.get("metadata") is not None:
            item["metadata"] = entry["metadata"]
        out.append(item)
    return results.order(out)


def responses_file_lines(entries: Iterable[dict[str, Any]], results: Results) -> list[bytes]:
    """The JSONL lines ``{"key", "response" | "error"}`` of a file batch's responses file."""
    lines: list[bytes] = []
    for entry, result in results.items(entries):
        item: dict[str, Any] = {}
        if entry.get("key") is not None:
            item["key"] = entry["key"]
        item.update(result)
        lines.append(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    return results.order(lines)


def chunked(lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` joined into chunks of about :data:`CHUNK` bytes."""
    buf: list[bytes] = []
    size = 0
    for line in lines:
        buf.append(line)
        size += len(line)
        if size >= CHUNK:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)
