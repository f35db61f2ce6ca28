"""Deterministic fake ``modelOutput`` bodies for Bedrock records, by model family.

Every family reuses the Anthropic generator (:func:`.outputs.anthropic_message`) on an equivalent
Anthropic request, so outputs follow the same rules as the other providers: deterministic in
(seed, body), token counts by the chars/4 rule, JSON valid against a forced tool's schema.

Invariant: :func:`record_problem` and :func:`model_output` agree: a body without a problem always
gets an output.
"""

from __future__ import annotations

from typing import Any

from . import outputs

_GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")


def family(model_id: str, invocation_type: str) -> str:
    """``anthropic``, ``converse`` (Converse API or Amazon Nova) or ``completion`` (anything else)."""
    if invocation_type == "Converse":
        return "converse"
    name = model_id.rsplit("/", 1)[-1]
    for prefix in _GEO_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.startswith("anthropic."):
        return "anthropic"
    if name.startswith("amazon.nova"):
        return "converse"
    return "completion"


def record_problem(kind: str, body: Any) -> str | None:
    """Why the model would refuse ``body`` (a per-record 400), or None."""
    if not isinstance(body, dict):
        return "modelInput must be a JSON object"
    if kind == "anthropic":
        if body.get("anthropic_version") != "bedrock-2023-05-31":
            return "anthropic_version: must be 'bedrock-2023-05-31'"
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return "max_tokens: required, an integer of at least 1"
        if not body.get("messages"):
            return "messages: required"
    elif kind == "converse":
        if not body.get("messages"):
            return "messages: required"
    elif not (body.get("prompt") or body.get("messages") or body.get("inputText")):
        return "prompt: required"
    return None


def _texts(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    if isinstance(blocks, list):
        return "\n".join(str(b.get("text") or "") for b in blocks if isinstance(b, dict))
    return ""


def _converse_as_anthropic(model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("inferenceConfig") or {}
    params: dict[str, Any] = {
        "model": model_id,
        "max_tokens": int(config.get("maxTokens") or 512),
        "messages": [
            {"role": m.get("role", "user"), "content": _texts(m.get("content"))}
            for m in body.get("messages") or []
            if isinstance(m, dict)
        ],
    }
    if body.get("system"):
        params["system"] = _texts(body["system"])
    tool_config = body.get("toolConfig") or {}
    tools = [
        {
            "name": t["toolSpec"].get("name"),
            "input_schema": (t["toolSpec"].get("inputSchema") or {}).get("json"),
        }
        for t in tool_config.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict)
    ]
    if tools:
        params["tools"] = tools
        forced = (tool_config.get("toolChoice") or {}).get("tool")
        if isinstance(forced, dict):
            params["tool_choice"] = {"type": "tool", "name": forced.get("name")}
    return params


def model_output(kind: str, model_id: str, body: dict[str, Any], seed: int) -> dict[str, Any]:
    """The ``modelOutput`` of a record whose ``modelInput`` is ``body`` (no problem with it)."""
    if kind == "anthropic":
        return outputs.anthropic_message({**body, "model": model_id}, seed)
    if kind == "converse":
        message = outputs.anthropic_message(_converse_as_anthropic(model_id, body), seed)
        content: list[dict[str, Any]] = []
        for block in message["content"]:
            if block["type"] == "tool_use":
                content.append(
                    {"toolUse": {"toolUseId": block["id"], "name": block["name"], "input": block["input"]}}
                )
            else:
                content.append({"text": block["text"]})
        usage = message["usage"]
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": message["stop_reason"],
            "usage": {
                "inputTokens": usage["input_tokens"],
                "outputTokens": usage["output_tokens"],
                "totalTokens": usage["input_tokens"] + usage["output_tokens"],
            },
        }
    prompt = str(body.get("prompt") or body.get("inputText") or _texts(body.get("messages")))
    cap = int(body.get("max_gen_len") or body.get("max_tokens") or 512)
    message = outputs.anthropic_message(
        {"model": model_id, "max_tokens": cap, "messages": [{"role": "user", "content": prompt}]}, seed
    )
    return {
        "generation": message["content"][0].get("text", ""),
        "prompt_token_count": message["usage"]["input_tokens"],
        "generation_token_count": message["usage"]["output_tokens"],
        "stop_reason": "length" if message["stop_reason"] == "max_tokens" else "stop",
    }
