"""Deterministic fake ``GenerateContentResponse`` bodies for Gemini batch requests.

Every response reuses the Anthropic generator (:func:`.outputs.anthropic_message`) on an
equivalent request, so the rules match the other providers: deterministic in (seed, request),
tokens by the chars/4 rule, capped by ``maxOutputTokens``, JSON valid against the schema when
``generationConfig.responseMimeType`` is ``application/json``.

Invariants:
- :func:`request_problem` and :func:`generate` agree: a request without a problem always gets a
  response.
- ``promptTokenCount`` includes ``cachedContentTokenCount`` (as Gemini reports it); a request
  naming ``cachedContent`` reports half its prompt tokens as cached.
"""

from __future__ import annotations

from typing import Any

from . import outputs

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


def generate(request: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    """The ``GenerateContentResponse`` of a request without a problem."""
    config = request.get("generationConfig") or {}
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": int(config.get("maxOutputTokens") or DEFAULT_MAX_OUTPUT_TOKENS),
        "messages": [{"role": "user", "content": prompt_text(request) or "(empty)"}],
    }
    schema = response_schema(request)
    if schema is not None:
        params["output_format"] = {"type": "json_schema", "schema": schema}
    message = outputs.anthropic_message(params, seed)
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
