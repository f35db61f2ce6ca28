"""Model families on Bedrock: one neutral request to a ``modelInput`` body, one ``modelOutput`` back.

Bedrock batch jobs send each line's ``modelInput`` to the model's own InvokeModel API (or to the
Converse API when the job's ``modelInvocationType`` is ``Converse``), so the body format depends on
the model family, read from the model id:

- ``anthropic.*``: Anthropic Messages with ``anthropic_version: bedrock-2023-05-31`` and no
  ``model`` field (the job names the model).
- ``amazon.nova*``: Nova ``messages-v1`` (``system``/``messages`` of ``{"text"}`` blocks,
  ``inferenceConfig``).
- ``Converse`` invocation type, any model: the Converse request body (the Nova shape without
  ``schemaVersion``).
- ``meta.llama3*`` / ``meta.llama4*``: ``prompt`` in the Llama 3 chat template, ``max_gen_len``,
  ``temperature``. No structured output (a response schema is refused: use Converse).

Cross-region inference profiles (``us.anthropic...``, ``global.anthropic...``) and profile ARNs
resolve to the family of the model they name. Other families accept ``LLMRequest.native`` as the
``modelInput`` as given.

Invariants:
- Translation is pure: the same request gives the same body.
- A requested response schema becomes one forced tool named :data:`STRUCTURED_TOOL`; its
  ``input`` is the answer, put in ``ResultRecord.parsed`` (and, as JSON text, in ``output_text``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from batch_provider.backends.wire import anthropic_system
from batch_provider.core.errors import RequestRejected
from batch_provider.core.models import ImagePart, LLMRequest, Message, RequestKind, Usage

ANTHROPIC_VERSION = "bedrock-2023-05-31"
STRUCTURED_TOOL = "bp_structured_output"
_GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


class ModelFamily(StrEnum):
    ANTHROPIC = "anthropic"
    NOVA = "nova"
    LLAMA = "llama"
    CONVERSE = "converse"
    OTHER = "other"


def base_model_id(model_id: str) -> str:
    """The foundation-model id behind ``model_id``: profile ARNs and geo prefixes removed."""
    name = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    for prefix in _GEO_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def family_of(model_id: str, invocation_type: str = "InvokeModel") -> ModelFamily:
    if invocation_type == "Converse":
        return ModelFamily.CONVERSE
    base = base_model_id(model_id)
    if base.startswith("anthropic."):
        return ModelFamily.ANTHROPIC
    if base.startswith("amazon.nova"):
        return ModelFamily.NOVA
    if base.startswith(("meta.llama3", "meta.llama4")):
        return ModelFamily.LLAMA
    return ModelFamily.OTHER


def model_input(request: LLMRequest, family: ModelFamily) -> dict[str, Any]:
    """The ``modelInput`` body for ``request``; raises ``RequestRejected`` naming the field."""
    if request.kind is RequestKind.EMBEDDING:
        raise RequestRejected(request.custom_id, "kind", "embeddings are not supported on Bedrock batch")
    if request.native is not None:
        body = dict(request.native)
        body.pop("model", None)
        if family is ModelFamily.ANTHROPIC:
            body.setdefault("anthropic_version", ANTHROPIC_VERSION)
            if request.max_tokens is not None:
                body.setdefault("max_tokens", request.max_tokens)
        elif family is ModelFamily.LLAMA and request.max_tokens is not None:
            body.setdefault("max_gen_len", request.max_tokens)
        elif family in (ModelFamily.NOVA, ModelFamily.CONVERSE) and request.max_tokens is not None:
            config = dict(body.get("inferenceConfig") or {})
            config.setdefault("maxTokens", request.max_tokens)
            body["inferenceConfig"] = config
    elif family is ModelFamily.ANTHROPIC:
        body = _anthropic_body(request)
    elif family in (ModelFamily.NOVA, ModelFamily.CONVERSE):
        body = _converse_body(request, nova=family is ModelFamily.NOVA)
    elif family is ModelFamily.LLAMA:
        body = _llama_body(request)
    else:
        raise RequestRejected(
            request.custom_id,
            "model",
            f"no request translation for model {request.model!r} (known: anthropic.*, amazon.nova*, "
            "meta.llama3*/4*); "
            "give a native modelInput or use invocation_type='Converse'",
        )
    body.update(request.extra)
    _check_body(request.custom_id, body, family)
    return body


def _check_body(custom_id: str, body: dict[str, Any], family: ModelFamily) -> None:
    if family is ModelFamily.ANTHROPIC:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise RequestRejected(custom_id, "max_tokens", "Anthropic models require max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestRejected(custom_id, "max_tokens", f"must be at least 1, got {max_tokens!r}")
    if family is ModelFamily.LLAMA:
        if not body.get("prompt"):
            raise RequestRejected(custom_id, "messages", "no messages given")
        return
    if family is not ModelFamily.OTHER and not body.get("messages"):
        raise RequestRejected(custom_id, "messages", "no messages given")


def _messages(request: LLMRequest) -> list[Message]:
    if request.messages:
        return request.messages
    if isinstance(request.input, str) and request.input:
        return [Message(role="user", content=request.input)]
    return []


def _anthropic_content(custom_id: str, message: Message) -> Any:
    if isinstance(message.content, str):
        return message.content
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            if part.data is None:
                raise RequestRejected(
                    custom_id, "messages", "Bedrock takes images inline (base64), not by URL"
                )
            source = {"type": "base64", "media_type": part.media_type, "data": part.data}
            parts.append({"type": "image", "source": source})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


def _anthropic_body(request: LLMRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"anthropic_version": ANTHROPIC_VERSION}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    system = anthropic_system(request)
    if system:
        body["system"] = system
    body["messages"] = [
        {"role": m.role, "content": _anthropic_content(request.custom_id, m)} for m in _messages(request)
    ]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.response_schema is not None:
        body["tools"] = [
            {
                "name": STRUCTURED_TOOL,
                "description": "Return the answer in this structure.",
                "input_schema": request.response_schema,
            }
        ]
        body["tool_choice"] = {"type": "tool", "name": STRUCTURED_TOOL}
    return body


def _converse_content(custom_id: str, message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"text": message.content}]
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            image_format = _IMAGE_FORMATS.get(part.media_type or "")
            if part.data is None or image_format is None:
                raise RequestRejected(
                    custom_id, "messages", "Bedrock takes png/jpeg/gif/webp images inline (base64) only"
                )
            parts.append({"image": {"format": image_format, "source": {"bytes": part.data}}})
        else:
            parts.append({"text": part.text})
    return parts


def _converse_body(request: LLMRequest, *, nova: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"schemaVersion": "messages-v1"} if nova else {}
    if request.system:
        body["system"] = [{"text": text} for text in request.system_blocks()]
        if request.cache_system_prompt:
            body["system"].append({"cachePoint": {"type": "default"}})
    body["messages"] = [
        {"role": m.role, "content": _converse_content(request.custom_id, m)} for m in _messages(request)
    ]
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.stop:
        config["stopSequences"] = request.stop
    if config:
        body["inferenceConfig"] = config
    if request.response_schema is not None:
        body["toolConfig"] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": STRUCTURED_TOOL,
                        "description": "Return the answer in this structure.",
                        "inputSchema": {"json": request.response_schema},
                    }
                }
            ],
            "toolChoice": {"tool": {"name": STRUCTURED_TOOL}},
        }
    return body


def _llama_body(request: LLMRequest) -> dict[str, Any]:
    """Llama 3 chat template; text only."""
    if request.response_schema is not None:
        raise RequestRejected(
            request.custom_id,
            "response_schema",
            "Llama on InvokeModel has no structured output; use Converse",
        )
    system = request.system_text()
    turns: list[tuple[str, str]] = [("system", system)] if system else []
    for message in _messages(request):
        if not isinstance(message.content, str) and any(isinstance(p, ImagePart) for p in message.content):
            raise RequestRejected(request.custom_id, "messages", "images need invocation_type='Converse'")
        turns.append((message.role, message.text()))
    if not any(role == "user" for role, _ in turns):
        return {}
    prompt = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>" for role, text in turns
    )
    body: dict[str, Any] = {"prompt": prompt + "<|start_header_id|>assistant<|end_header_id|>\n\n"}
    if request.max_tokens is not None:
        body["max_gen_len"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        raise RequestRejected(request.custom_id, "stop", "Llama on InvokeModel has no stop sequences")
    return body


@dataclass(frozen=True)
class ModelAnswer:
    """What a ``modelOutput`` says, in neutral terms."""

    text: str | None
    parsed: Any
    finish_reason: str | None
    usage: Usage
    model: str | None = None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def answer_of(output: dict[str, Any]) -> ModelAnswer:
    """Read a ``modelOutput`` of any known family (recognised by its shape, not the model id)."""
    if isinstance(output.get("content"), list):  # Anthropic Messages
        blocks = output["content"]
        tool = next(
            (b for b in blocks if b.get("type") == "tool_use" and b.get("name") == STRUCTURED_TOOL), None
        )
        text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
        raw = output.get("usage") or {}
        return ModelAnswer(
            text=json.dumps(tool.get("input"), ensure_ascii=False) if tool else text,
            parsed=tool.get("input") if tool else None,
            finish_reason=output.get("stop_reason"),
            usage=Usage.model_construct(
                input_tokens=_int(raw.get("input_tokens")),
                output_tokens=_int(raw.get("output_tokens")),
                cache_read_tokens=_int(raw.get("cache_read_input_tokens")),
                cache_write_tokens=_int(raw.get("cache_creation_input_tokens")),
            ),
            model=output.get("model"),
        )
    if isinstance(output.get("output"), dict):  # Nova / Converse
        blocks = ((output["output"].get("message") or {}).get("content")) or []
        tool = next(
            (
                b["toolUse"]
                for b in blocks
                if isinstance(b.get("toolUse"), dict) and b["toolUse"].get("name") == STRUCTURED_TOOL
            ),
            None,
        )
        text = "".join(b.get("text") or "" for b in blocks if "text" in b)
        raw = output.get("usage") or {}
        return ModelAnswer(
            text=json.dumps(tool.get("input"), ensure_ascii=False) if tool else text,
            parsed=tool.get("input") if tool else None,
            finish_reason=output.get("stopReason"),
            usage=Usage.model_construct(
                input_tokens=_int(raw.get("inputTokens")),
                output_tokens=_int(raw.get("outputTokens")),
                cache_read_tokens=_int(
                    raw.get("cacheReadInputTokens") or raw.get("cacheReadInputTokenCount")
                ),
                cache_write_tokens=_int(
                    raw.get("cacheWriteInputTokens") or raw.get("cacheWriteInputTokenCount")
                ),
            ),
        )
    if "generation" in output:  # Meta Llama and similar completion models
        return ModelAnswer(
            text=str(output.get("generation") or ""),
            parsed=None,
            finish_reason=output.get("stop_reason"),
            usage=Usage.model_construct(
                input_tokens=_int(output.get("prompt_token_count")),
                output_tokens=_int(output.get("generation_token_count")),
                cache_read_tokens=0,
                cache_write_tokens=0,
            ),
        )
    return ModelAnswer(text=None, parsed=None, finish_reason=None, usage=Usage())
