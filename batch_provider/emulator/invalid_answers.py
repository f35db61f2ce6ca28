"""Invalid structured answers, injected on demand (fault directive ``invalid_output=F``, token
``invalidNN``, or server-wide ``batch_faults``).

Invariants:
- Whether a request's answer is made invalid, and how, is deterministic in (seed, custom_id):
  a resubmission goes under a new custom_id, so it draws again (it is invalid again with
  probability F, as a model that slipped once may or may not slip again).
- Only answers that are JSON are touched (schema-less prose and truncated answers stay as they
  are); the usage figures are left as generated.
- Three kinds, picked per request: ``broken_json`` (the text cut in half: not JSON; a tool call,
  which cannot hold broken JSON, loses a field instead), ``missing_field`` (the first key of the
  object removed) and ``wrong_type`` (the first key's value replaced by one of another type).
"""

from __future__ import annotations

import json
from typing import Any

from .faults import BatchFaults, unit_hash

KINDS = ("broken_json", "missing_field", "wrong_type")


def invalid_kind(seed: int, custom_id: str, faults: BatchFaults | None) -> str | None:
    """The kind of invalid answer ``custom_id`` gets under ``faults``, or None."""
    share = faults.invalid_output if faults is not None else None
    if not share:
        return None
    h = unit_hash(seed, "invalid_output", custom_id)
    if (h >> 11) / float(1 << 53) >= share:
        return None
    return KINDS[h % len(KINDS)]


def _other_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, int | float):
        return "not a number"
    if isinstance(value, str):
        return {"unexpected": 1}
    if isinstance(value, list):
        return "not a list"
    if isinstance(value, dict):
        return 7
    return {"unexpected": 1}


def corrupt_value(value: Any, kind: str) -> Any:
    """A copy of the JSON value ``value`` made invalid by ``kind`` (``broken_json`` acts as
    ``missing_field``: a value cannot hold broken JSON)."""
    if not isinstance(value, dict) or not value:
        return _other_type(value)
    first = next(iter(value))
    if kind == "wrong_type":
        return {**value, first: _other_type(value[first])}
    return {k: v for k, v in value.items() if k != first}


def corrupt_text(text: str, kind: str) -> str:
    """``text`` made invalid by ``kind``; unchanged when it is not JSON."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if kind == "broken_json":
        return text[: max(1, len(text) // 2)]
    return json.dumps(corrupt_value(value, kind), ensure_ascii=False, separators=(",", ":"))


def corrupt_anthropic(message: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """An Anthropic ``message`` whose JSON text or tool input is made invalid (in place)."""
    if kind is None or message.get("stop_reason") == "max_tokens":
        return message
    for block in message.get("content") or []:
        if block.get("type") == "tool_use":
            block["input"] = corrupt_value(block.get("input"), kind)
        elif block.get("type") == "text":
            block["text"] = corrupt_text(block.get("text") or "", kind)
    return message


def corrupt_openai(response: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """An OpenAI chat or responses body whose JSON text is made invalid (in place)."""
    if kind is None:
        return response
    for choice in response.get("choices") or []:
        message = choice.get("message") or {}
        if choice.get("finish_reason") == "stop" and isinstance(message.get("content"), str):
            message["content"] = corrupt_text(message["content"], kind)
    if response.get("object") == "response" and response.get("status") == "completed":
        for item in response.get("output") or []:
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    part["text"] = corrupt_text(part.get("text") or "", kind)
    return response
