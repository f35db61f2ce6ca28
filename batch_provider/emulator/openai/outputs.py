"""OpenAI batch output and error files: their lines, written from the input copy in one pass.

Invariants:
- A file's bytes depend only on (seed, batch id, input file, which requests ran and failed,
  timeline): writing it twice gives the same bytes.
- Requests run in file order: requests ``0..done-1`` ran; each one that ran is a line of the output
  file (success) or of the error file (failure); a request that did not run is an error-file line
  only when ``unrun_error`` is set (expired, or cancelled with ``cancelled_unrun_error_lines``).
- Lines are compact JSON with non-ASCII characters kept (``json.dumps(..., separators=(",", ":"),
  ensure_ascii=False)``); lines that can hold floats are encoded with :mod:`json` because msgspec
  writes floats differently (``0.0000794`` for ``7.94e-05``).
- Synthetic batches (``/_emu/synthetic``) have fixed-length lines generated on the fly, never stored.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .. import outputs
from ..faults import BatchFaults
from ..invalid_answers import corrupt_openai, invalid_kind
from ..prompt_cache import PromptCache, openai_usage
from . import answers

ITEM_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (emulated fault)."),
    422: ("invalid_request_error", None, "Unprocessable request (emulated fault)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (emulated fault)."),
    500: ("server_error", None, "The server had an error while processing your request (emulated fault)."),
    503: (
        "server_error",
        None,
        "The engine is currently overloaded, please try again later (emulated fault).",
    ),
    504: ("server_error", "timeout", "The request timed out (emulated fault)."),
    529: ("server_error", None, "The server is overloaded (emulated fault)."),
}
"""Injected per-request error status → (error type, error code, message)."""

FLOAT_FREE_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
"""Endpoints whose success lines never hold a float (responses echo ``temperature``; embeddings are
vectors), so msgspec encodes them byte for byte like :mod:`json`."""

_JSON_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class OutputJob:
    """What one output or error file of a batch holds."""

    batch_id: str
    endpoint: str
    kind: str
    """``output`` (successes) or ``error`` (failures, and unrun requests when ``unrun_error``)."""
    done: int
    """Requests ``0..done-1`` ran."""
    fail: dict[int, tuple[int, str, str | None]]
    """Index → (status, message, param) of requests that ran and failed."""
    unrun_error: tuple[str, str] | None
    """(code, message) of the error line of each request that did not run, or None: no line."""
    t_v: float
    """End of validation: request ``i`` finished at ``t_v + (i + 1) * step``."""
    step: float
    seed: int
    embedding_dim: int
    shuffle: bool
    faults: BatchFaults | None = None
    """The batch's fault directives (for ``invalid_output``)."""


def write_file(job: OutputJob, src: Path, target: Path) -> None:
    """Write ``job``'s lines for the input copy ``src`` to ``target`` (atomically, via a rename)."""
    tmp = target.with_suffix(".partial")
    encode = _line_encoder(job)
    cache = PromptCache()
    offsets: list[tuple[int, int]] = []
    pos = 0
    with src.open("rb") as fh, tmp.open("wb") as out:
        idx = -1
        for raw in fh:
            if not raw.strip():
                continue
            idx += 1
            if idx >= job.done and (job.kind == "output" or job.unrun_error is None):
                break
            line = _line_for(job, idx, raw, cache)
            if line is None:
                continue
            data = encode(line)
            out.write(data)
            if job.shuffle:
                offsets.append((pos, len(data)))
            pos += len(data)
    if not job.shuffle:
        os.replace(tmp, target)
        return
    random.Random(outputs.body_hash(job.seed, f"{job.batch_id}:{job.kind}:shuffle")).shuffle(offsets)
    with tmp.open("rb") as fh, target.open("wb") as out:
        for off, length in offsets:
            fh.seek(off)
            out.write(fh.read(length))
    tmp.unlink()


def _line_encoder(job: OutputJob) -> Callable[[dict[str, Any]], bytes]:
    if job.kind == "error" or job.endpoint in FLOAT_FREE_ENDPOINTS:
        return _msgspec_line
    return _json_line


def _msgspec_line(line: dict[str, Any]) -> bytes:
    return msgspec.json.encode(line) + b"\n"


def _json_line(line: dict[str, Any]) -> bytes:
    return (_JSON_LINE.encode(line) + "\n").encode()


def _line_for(
    job: OutputJob, idx: int, raw: bytes, cache: PromptCache | None = None
) -> dict[str, Any] | None:
    """The line request ``idx`` (input line ``raw``) has in ``job``'s file, or None.

    The input is decoded only for requests that have a line."""
    if idx >= job.done:
        if job.kind != "error" or job.unrun_error is None:
            return None
        code, message = job.unrun_error
        return _line(job, msgspec.json.decode(raw)["custom_id"], None, {"code": code, "message": message})
    failure = job.fail.get(idx)
    if (failure is None) != (job.kind == "output"):
        return None
    obj = msgspec.json.decode(raw)
    if failure is None:
        created = int(job.t_v + (idx + 1) * job.step)
        resp, _, _ = answers.openai_response(job.endpoint, obj["body"], job.seed, created, job.embedding_dim)
        corrupt_openai(resp, invalid_kind(job.seed, obj["custom_id"], job.faults))
        openai_usage(cache, job.endpoint, obj["body"], resp)
        return _line(job, obj["custom_id"], 200, resp)
    status, message, param = failure
    etype, ecode, _ = ITEM_ERRORS.get(status, ITEM_ERRORS[400])
    body = {"error": {"message": message, "type": etype, "param": param, "code": ecode}}
    return _line(job, obj["custom_id"], status, body)


def _line(job: OutputJob, cid: str, status: int | None, body: Any) -> dict[str, Any]:
    """A batch result line: ``response`` = (status, body) when the request ran, else ``error`` = body."""
    rid = outputs.short_id(outputs.body_hash(job.seed, f"{job.batch_id}:{cid}"))
    response = None if status is None else {"status_code": status, "request_id": f"req_{rid}", "body": body}
    return {
        "id": f"batch_req_{rid}",
        "custom_id": cid,
        "response": response,
        "error": body if status is None else None,
    }


# ----------------------------------------------------------------------------- synthetic batches

SYNTHETIC_MODEL = "gpt-synthetic"


def synthetic_tokens(text_bytes: int) -> int:
    return math.ceil(text_bytes / 4)


def _synthetic_parts(text_bytes: int) -> tuple[bytes, bytes, bytes, bytes]:
    tok = synthetic_tokens(text_bytes)
    filler = ("lorem ipsum dolor sit amet " * (text_bytes // 27 + 1))[:text_bytes]
    body_tail = (
        '","object":"chat.completion","created":0,"model":"' + SYNTHETIC_MODEL + '","choices":[{"index":0,'
        '"message":{"role":"assistant","content":"' + filler + '","refusal":null,"annotations":[]},'
        '"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":'
        + str(tok)
        + ',"total_tokens":'
        + str(tok + 10)
        + '}}},"error":null}\n'
    )
    return (
        b'{"id":"batch_req_synth',
        b'","custom_id":"synth-',
        b'","response":{"status_code":200,"body":{"id":"chatcmpl-synth',
        body_tail.encode(),
    )


def synthetic_line_length(text_bytes: int) -> int:
    return sum(len(p) for p in _synthetic_parts(text_bytes)) + 3 * 8


def synthetic_chunks(lines: int, text_bytes: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The output file of a synthetic batch: ``lines`` fixed-length lines, built per ~1 MiB chunk."""
    a, b, c, tail = _synthetic_parts(text_bytes)
    per_chunk = max(1, chunk // synthetic_line_length(text_bytes))
    for start in range(0, lines, per_chunk):
        parts = []
        for i in range(start, min(lines, start + per_chunk)):
            num = b"%08d" % i
            parts.append(a + num + b + num + c + num + tail)
        yield b"".join(parts)
