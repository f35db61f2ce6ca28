"""What an Anthropic message batch answers: per-request problems, ``errored`` results and the
chunks of its results stream, generated from the stored requests file (or synthetic).

Succeeded results hold the shared generator's messages (:func:`.outputs.anthropic_message`).

Invariants:
- A results stream is generated on the fly from the stored requests file, one line per custom_id,
  and never holds more than one chunk (about :data:`CHUNK` bytes) in memory.
- Requests ``0..done-1`` ran: each is ``succeeded``, or ``errored`` when the plan fails it; the
  others end as the batch's ``unrun_as`` (``expired`` or ``canceled``).
- The stream is in file order, or in one permutation seeded by ``(seed, shuffle_key)`` read through
  the plan's line offsets.
- Synthetic batches (``/_emu/synthetic``) have fixed-shape succeeded lines, never stored.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import outputs
from ..invalid_answers import corrupt_anthropic, invalid_kind
from ..prompt_cache import PromptCache, anthropic_usage

if TYPE_CHECKING:
    from .plan import Plan

ERROR_TYPES = {
    400: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Injected item status → the Anthropic error type of its ``errored`` result."""
CHUNK = 1 << 20


def params_problem(params: dict[str, Any]) -> str | None:
    """Why a message batch would refuse a request's ``params`` (an ``errored`` result), or None."""
    if not isinstance(params.get("model"), str) or not params["model"]:
        return "model: Field required"
    mt = params.get("max_tokens")
    if mt is None:
        return "max_tokens: Field required"
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    msgs = params.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: Field required" if msgs is None else "messages: List should have at least 1 item"
    if params.get("stream"):
        return "stream: Streaming is not supported in message batches."
    if "speed" in params:
        return "speed: This parameter is not supported in message batches."
    return None


def result_chunks(
    path: Path, plan: Plan, done: int, unrun_as: str | None, seed: int, shuffle_key: str | None
) -> Iterator[bytes]:
    """JSONL result chunks (about :data:`CHUNK` bytes each) of the requests file ``path``, in file
    order, or shuffled when ``shuffle_key`` is given."""
    buf: list[bytes] = []
    size = 0
    cache = PromptCache()
    with path.open("rb") as fh:
        if shuffle_key is not None:
            order = list(range(plan.n))
            random.Random(outputs.body_hash(seed, shuffle_key)).shuffle(order)
            lines: Iterator[tuple[int, bytes]] = (
                (i, _read_at(fh, plan.offsets[i], plan.offsets[i + 1])) for i in order
            )
        else:
            lines = enumerate(fh)
        for idx, raw in lines:
            obj = json.loads(raw)
            result = _result(obj, idx, done, unrun_as, plan, seed, cache)
            data = json.dumps(
                {"custom_id": obj["custom_id"], "result": result},
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
            buf.append(data + b"\n")
            size += len(data) + 1
            if size >= CHUNK:
                yield b"".join(buf)
                buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _result(
    obj: dict[str, Any],
    idx: int,
    done: int,
    unrun_as: str | None,
    plan: Plan,
    seed: int,
    cache: PromptCache | None = None,
) -> dict[str, Any]:
    if idx >= done:
        return {"type": unrun_as or "canceled"}
    failure = plan.fail.get(idx)
    if failure is not None:
        return {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": failure[0], "message": failure[1]},
                "request_id": None,
            },
        }
    message = outputs.anthropic_message(obj["params"], seed)
    corrupt_anthropic(message, invalid_kind(seed, obj["custom_id"], plan.faults))
    anthropic_usage(cache, obj["params"], message["usage"])
    return {"type": "succeeded", "message": message}


def _read_at(fh: Any, start: int, end: int) -> bytes:
    fh.seek(start)
    return fh.read(end - start)


def synthetic_chunks(n: int, text_bytes: int) -> Iterator[bytes]:
    """``n`` fixed-shape succeeded results with a text of ``text_bytes`` bytes, built cheaply."""
    filler = ("lorem ipsum dolor sit amet " * (text_bytes // 27 + 1))[:text_bytes]
    tok = max(1, math.ceil(text_bytes / 4))
    head = b'{"custom_id":"synth-'
    tail = (
        '","result":{"type":"succeeded","message":{"id":"msg_01synthetic","type":"message","role":"assistant",'
        '"model":"claude-synthetic","content":[{"type":"text","text":"'
        + filler
        + '"}],"stop_reason":"end_turn",'
        '"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":'
        + str(tok)
        + ',"service_tier":"batch"}}}}\n'
    ).encode()
    per_chunk = max(1, CHUNK // (len(tail) + 30))
    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk)
        yield b"".join(head + b"%08d" % i + tail for i in range(start, stop))
