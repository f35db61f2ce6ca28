"""What a Vertex batch prediction job writes: ``predictions*.jsonl`` under its output directory.

Each line echoes the request (with its ``labels``) and adds either ``response`` (a
``GenerateContentResponse`` from the Gemini face's generator, :func:`..gemini.outputs.generate`,
``usageMetadata`` with ``cachedContentTokenCount`` on implicit cache reads) and ``status: ""``, or
only ``status``, the error text Vertex writes for a failed row::

    {"status": "", "processed_time": "2026-12-03T07:00:00.123+00:00", "request": {...}, "response": {...}}
    {"status": "Too Many Requests: {\"error\": {\"code\": 429, ...}}", "processed_time": ...,
     "request": {...}}

Invariants:
- Lines cover the first ``done`` requests of the input, in a shuffled order seeded by (seed, job
  id): Vertex keeps no order, and a client must match rows by their labels.
- Deterministic in (seed, job id, input copy, done): writing again gives the same bytes.
- Lines go to ``predictions.jsonl``, or, past ``lines_per_file``, to ``predictions_00001.jsonl``,
  ``predictions_00002.jsonl``, …; nothing is written for a job with no finished row.
"""

from __future__ import annotations

import http
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from ..gemini.input import Plan
from ..gemini.outputs import ITEM_STATUS, Results


def processed_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def status_text(code: int, message: str) -> str:
    """The ``status`` of a failed row: the HTTP reason, then Google's error envelope."""
    shown = 503 if code == 529 else code
    try:
        reason = http.HTTPStatus(shown).phrase
    except ValueError:
        reason = "Error"
    envelope = {"error": {"code": shown, "message": message, "status": ITEM_STATUS[code][0]}}
    return f"{reason}: {json.dumps(envelope)}"


def prediction_lines(
    entries: Iterable[dict[str, Any]], plan: Plan, results: Results, finished_at: Callable[[int], float]
) -> list[bytes]:
    """The lines of the first ``results.done`` requests (``entries`` in input order), shuffled;
    ``finished_at(i)`` is when request ``i`` was processed."""
    lines: list[bytes] = []
    for idx, (entry, result) in enumerate(results.items(entries)):
        request = dict(entry["request"])
        if entry.get("labels") is not None:
            request["labels"] = entry["labels"]
        line: dict[str, Any] = {"status": "", "processed_time": processed_time(finished_at(idx))}
        failure = plan.fail.get(idx)
        if failure is not None:
            line["status"] = status_text(*failure)
        line["request"] = request
        if "response" in result:
            line["response"] = result["response"]
        lines.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    return results.order(lines)


def files(lines: list[bytes], lines_per_file: int) -> Iterator[tuple[str, bytes]]:
    """(file name, content) of the predictions files holding ``lines``."""
    if not lines:
        return
    per = max(1, lines_per_file)
    if len(lines) <= per:
        yield "predictions.jsonl", b"".join(lines)
        return
    for number, start in enumerate(range(0, len(lines), per), start=1):
        yield f"predictions_{number:05d}.jsonl", b"".join(lines[start : start + per])
