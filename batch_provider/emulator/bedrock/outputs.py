"""What a Bedrock job writes: deterministic fake ``modelOutput`` bodies by model family, per-record
errors, and the lines of its ``<input file>.out`` files.

Every family reuses the Anthropic generator (:func:`.outputs.anthropic_message`) on an equivalent
Anthropic request, so outputs follow the same rules as the other providers: deterministic in
(seed, body), token counts by the chars/4 rule, JSON valid against a forced tool's schema.

Invariants:
- :func:`record_problem` and :func:`model_output` agree: a body without a problem always gets an
  output.
- :func:`output_lines` writes the first ``done`` records in input order, each in the ``.out`` file
  of the input file it came from; only a shuffle (seeded) changes the order within a file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import outputs
from ..faults import BatchFaults, directive_id, parse_custom_id
from ..invalid_answers import corrupt_anthropic, invalid_kind
from ..prompt_cache import PromptCache, anthropic_usage, converse_usage
from ..resends import ItemCode, first_sightings

if TYPE_CHECKING:
    from .jobs import BedrockJob

_GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")
ITEM_MESSAGES = {
    400: "Malformed input request, please reformat your input and try again.",
    422: "The request could not be processed.",
    429: "Too many requests, please wait before trying again.",
    500: "The server encountered an internal error while processing the request.",
    503: "The service is temporarily unavailable.",
    504: "The model timed out.",
    529: "The model is overloaded.",
}
"""Injected item status → the ``errorMessage`` Bedrock gives for it."""


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


def record_error(kind: str, body: Any, code: int) -> dict[str, Any]:
    """The ``error`` of a record that ends with status ``code``: for a 400, its
    :func:`record_problem` when it has one; else the message for that status."""
    problem = record_problem(kind, body)
    message = problem if code == 400 and problem else ITEM_MESSAGES.get(code, "Error")
    return {"errorCode": code, "errorMessage": message}


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


def model_output(
    kind: str,
    model_id: str,
    body: dict[str, Any],
    seed: int,
    cache: PromptCache | None = None,
    invalid: str | None = None,
) -> dict[str, Any]:
    """The ``modelOutput`` of a record whose ``modelInput`` is ``body`` (no problem with it); with
    ``cache``, its prompt-cache usage within the job (:mod:`.prompt_cache`); with ``invalid`` (a
    kind of :mod:`.invalid_answers`), its JSON answer is made invalid."""
    if kind == "anthropic":
        message = corrupt_anthropic(outputs.anthropic_message({**body, "model": model_id}, seed), invalid)
        anthropic_usage(cache, body, message["usage"])
        return message
    if kind == "converse":
        message = outputs.anthropic_message(_converse_as_anthropic(model_id, body), seed)
        corrupt_anthropic(message, invalid)
        content: list[dict[str, Any]] = []
        for block in message["content"]:
            if block["type"] == "tool_use":
                content.append(
                    {"toolUse": {"toolUseId": block["id"], "name": block["name"], "input": block["input"]}}
                )
            else:
                content.append({"text": block["text"]})
        usage = message["usage"]
        converse: dict[str, Any] = {
            "inputTokens": usage["input_tokens"],
            "outputTokens": usage["output_tokens"],
            "totalTokens": usage["input_tokens"] + usage["output_tokens"],
        }
        converse_usage(cache, body, converse)
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": message["stop_reason"],
            "usage": converse,
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


# ----------------------------------------------------------------------------- a job's output files


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a job's local input copy, in input order (none when it was never written)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def error_codes(
    job: BedrockJob, records: list[dict[str, Any]], seed: int, item_code: ItemCode | None = None
) -> list[int | None]:
    """The error code each record ends with, in input order: an injected fault (``emu_faults`` or
    its ``recordId``; decided by ``item_code``, default as if sent for the first time), else 400
    when :func:`record_problem` refuses its ``modelInput``, else None."""
    faults = BatchFaults.from_json(job.faults)
    pick_code = item_code or first_sightings(seed)
    kind = family(job.model_id, job.invocation_type)
    codes: list[int | None] = []
    for record in records:
        record_id = str(record.get("recordId"))
        explicit, _ = parse_custom_id(directive_id(record_id, record.get("modelInput")))
        code = pick_code(record_id, faults, explicit, record.get("modelInput"))
        if code is None and record_problem(kind, record.get("modelInput")):
            code = 400
        codes.append(code)
    return codes


def output_lines(
    job: BedrockJob,
    records: list[dict[str, Any]],
    codes: list[int | None],
    done: int,
    seed: int,
    *,
    shuffle: bool,
) -> dict[str, list[bytes]]:
    """``<input file>.out`` name → its lines, for the first ``done`` records: each echoes its
    ``recordId`` and ``modelInput`` and holds a ``modelOutput``, or an ``error`` where ``codes`` has
    one. With ``shuffle`` each file's lines are shuffled, seeded by (seed, job id, file name)."""
    kind = family(job.model_id, job.invocation_type)
    faults = BatchFaults.from_json(job.faults)
    if records:  # the first record's [[emu:…]] batch tokens (``invalidNN``) count as well
        first = records[0]
        _, tokens = parse_custom_id(directive_id(str(first.get("recordId")), first.get("modelInput")))
        if tokens.invalid_output is not None:
            faults.invalid_output = tokens.invalid_output
    out: dict[str, list[bytes]] = {}
    cache = PromptCache()
    position = 0
    for name, count in job.files:
        lines = out.setdefault(f"{name}.out", [])
        for record in records[position : position + count]:
            if position >= done:
                break
            code = codes[position]
            line: dict[str, Any] = {"recordId": record["recordId"], "modelInput": record["modelInput"]}
            if code is None:
                invalid = invalid_kind(seed, str(record["recordId"]), faults)
                line["modelOutput"] = model_output(
                    kind, job.model_id, record["modelInput"], seed, cache, invalid
                )
            else:
                line["error"] = record_error(kind, record.get("modelInput"), code)
            lines.append(json.dumps(line, separators=(",", ":")).encode())
            position += 1
        else:
            continue
        break
    if shuffle:
        for name, lines in out.items():
            random.Random(f"{seed}:{job.job_id}:{name}").shuffle(lines)
    return out
