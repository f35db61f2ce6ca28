"""OpenAI batch plan: its input file validated and its requests planned, once.

The plan holds what the batch state machine (:mod:`.state`) derives everything from: the
validation errors (``errors.data``, at most :data:`MAX_ERRORS` line errors), the request count and
model, which requests fail and why (injected faults, bodies the endpoint itself would refuse) and
prefix sums of token usage, so that counts and usage after any prefix of the requests are
O(log n).

Invariants:
- A plan depends only on its inputs (config, input file, the batch's endpoint and faults), never
  on time: building it again gives the same plan.
- Requests are indexed in file order, blank lines skipped; ``line`` in an error is 1-based and
  counts every line.
- Without validation errors, ``in_prefix`` and ``out_prefix`` have ``n + 1`` entries and a
  failing request adds no tokens.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .. import models
from ..config import EmulatorConfig
from ..faults import BatchFaults, directive_id, parse_custom_id
from ..resends import ItemCode, first_sightings
from . import answers
from .outputs import ITEM_ERRORS, SYNTHETIC_MODEL, synthetic_tokens

MAX_ERRORS = 1000
"""At most this many line errors are reported (``errors.data``)."""


@dataclass
class Plan:
    n: int = 0
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    fail: dict[int, tuple[int, str, str | None]] = field(default_factory=dict)
    """index → (status, message, param) of requests that run and get a non-2xx answer."""
    fail_sorted: list[int] = field(default_factory=list)
    in_prefix: array = field(default_factory=lambda: array("q", [0]))
    out_prefix: array = field(default_factory=lambda: array("q", [0]))
    faults: BatchFaults = field(default_factory=BatchFaults)
    injected: Counter[str] = field(default_factory=Counter)
    """Injected faults by kind (``item_<status>``, ``batch_<directive>``), for the stats."""

    def failed_before(self, k: int) -> int:
        return bisect.bisect_left(self.fail_sorted, k)


def build_plan(
    cfg: EmulatorConfig,
    path: Path,
    *,
    endpoint: str,
    input_file_id: str,
    faults: BatchFaults,
    input_missing: bool = False,
    item_code: ItemCode | None = None,
) -> Plan:
    """Validate the input copy ``path`` of a batch for ``endpoint`` and plan its requests (runs in a
    worker thread; a missing input is ``input_missing`` or a missing ``path``). ``item_code`` decides
    each request's injected error (default: as if every request were sent for the first time)."""
    plan = Plan(faults=faults)
    pick_code = item_code or first_sightings(cfg.seed)
    if input_missing or not path.exists():
        plan.errors.append(
            _err(
                "file_not_found",
                f"Cannot find file {input_file_id}, or organization {cfg.organization} "
                "does not have access to it.",
                param="input_file_id",
            )
        )
        return plan
    if path.stat().st_size > cfg.openai_max_file_bytes:
        plan.errors.append(
            _err("file_too_large", f"The input file is larger than {cfg.openai_max_file_bytes} bytes.")
        )
        return plan
    seen: set[str] = set()
    emb_inputs = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            idx = plan.n
            plan.n += 1
            if plan.n > cfg.openai_max_requests:
                continue
            line_err = _check_line(raw, endpoint, seen, cfg.custom_id_max_len)
            if isinstance(line_err, dict):
                if len(plan.errors) < MAX_ERRORS:
                    plan.errors.append({**line_err, "line": lineno})
                continue
            custom_id, body = line_err
            model = body.get("model")
            if plan.model is None:
                plan.model = model
                if not models.serves(cfg, "openai", model):
                    message = models.openai_message(str(model))
                    plan.errors.append(_err("model_not_found", message, param="body.model", line=lineno))
            elif model != plan.model and len(plan.errors) < MAX_ERRORS:
                plan.errors.append(
                    _err(
                        "model_mismatch",
                        f"The model {model!r} differs from {plan.model!r}: a batch file may use only "
                        "one model.",
                        param="body.model",
                        line=lineno,
                    )
                )
            explicit, tokens = parse_custom_id(directive_id(custom_id, raw), cfg.expire_done_fraction)
            if idx == 0:
                plan.faults = plan.faults.merged(tokens)
            if endpoint == "/v1/embeddings":
                emb_inputs += len(answers.embedding_inputs(body))
            if plan.errors:
                continue
            code = pick_code(custom_id, plan.faults, explicit, body)
            refusal = _body_problem(endpoint, body)
            in_tok = out_tok = 0
            if code is not None:
                plan.fail[idx] = (code, ITEM_ERRORS[code][2], None)
                plan.injected[f"item_{code}"] += 1
            elif refusal is not None:
                plan.fail[idx] = (400, refusal[0], refusal[1])
            else:
                in_tok, out_tok = answers.openai_usage(endpoint, body, cfg.seed)
            plan.in_prefix.append(plan.in_prefix[-1] + in_tok)
            plan.out_prefix.append(plan.out_prefix[-1] + out_tok)
    if plan.n == 0:
        plan.errors.append(_err("empty_file", "The input file is empty: it holds no requests."))
    elif plan.n > cfg.openai_max_requests:
        plan.errors.insert(
            0,
            _err(
                "too_many_tasks",
                f"The batch has {plan.n} requests; the limit is {cfg.openai_max_requests}.",
            ),
        )
    elif emb_inputs > cfg.openai_max_embedding_inputs:
        plan.errors.append(
            _err(
                "too_many_embedding_inputs",
                f"The batch has {emb_inputs} embedding inputs; the limit is "
                f"{cfg.openai_max_embedding_inputs}.",
            )
        )
    if not plan.errors and plan.faults.fail_validation:
        code = plan.faults.fail_validation
        msg = (
            f"Enqueued token limit reached for {plan.model} in organization {cfg.organization}. "
            "Limit: 90000 enqueued tokens. Please try again once some in_progress batches have been "
            "completed."
            if code == "token_limit_exceeded"
            else f"Validation failed ({code}, emulated fault)."
        )
        plan.errors.append(_err(code, msg))
    plan.fail_sorted = sorted(plan.fail)
    return plan


def synthetic_plan(n: int, text_bytes: int) -> Plan:
    """The plan of a ``/_emu/synthetic`` batch: ``n`` requests that all succeed."""
    tok = synthetic_tokens(text_bytes)
    return Plan(
        n=n,
        model=SYNTHETIC_MODEL,
        in_prefix=array("q", range(0, 10 * (n + 1), 10)),
        out_prefix=array("q", range(0, tok * (n + 1), tok)) if tok else array("q", [0] * (n + 1)),
    )


def _err(code: str, message: str, *, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(
    raw: bytes, endpoint: str, seen: set[str], max_len: int
) -> dict[str, Any] | tuple[str, dict[str, Any]]:
    """A validation error dict for a bad line, else (custom_id, body)."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        obj = None
    if not isinstance(obj, dict):
        return _err("invalid_json_line", "This line is not parseable as valid JSON.")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= max_len:
        return _err(
            "invalid_custom_id",
            f"'custom_id' must be a string of 1..{max_len} characters.",
            param="custom_id",
        )
    if cid in seen:
        return _err(
            "duplicate_custom_id",
            f"The custom_id '{cid}' appears more than once; custom_id must be unique within a file.",
            param="custom_id",
        )
    seen.add(cid)
    if obj.get("method") != "POST":
        return _err("invalid_method", "Only the 'POST' method is supported.", param="method")
    if obj.get("url") != endpoint:
        return _err(
            "url_mismatch",
            f"The url {obj.get('url')!r} does not match the batch endpoint {endpoint!r}.",
            param="url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return _err("invalid_body", "'body' must be a JSON object.", param="body")
    if body.get("stream") is True:
        return _err(
            "stream_not_supported",
            "Streaming ('stream': true) is not supported in batches.",
            param="body.stream",
        )
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _err("missing_model", "Missing required parameter: 'body.model'.", param="body.model")
    return cid, body


def _body_problem(endpoint: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) when the endpoint itself would refuse the body with a 400."""
    if endpoint == "/v1/chat/completions":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "Missing required parameter: 'messages'.", "messages"
    elif endpoint == "/v1/responses":
        if body.get("input") in (None, "", []):
            return "Missing required parameter: 'input'.", "input"
    elif endpoint == "/v1/embeddings":
        if not answers.embedding_inputs(body):
            return "'input' must be a non-empty string or array.", "input"
        dims = body.get("dimensions")
        if dims is not None and (
            not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096
        ):
            return "Invalid value for 'dimensions': expected an integer within 1..4096.", "dimensions"
    elif endpoint == "/v1/completions" and body.get("prompt") in (None, "", []):
        return "Missing required parameter: 'prompt'.", "prompt"
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            return f"Invalid value for '{key}': expected an integer >= 1.", key
    return None
