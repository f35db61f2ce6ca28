"""How many input rows were rejected and why, and the share of rejects a run accepts.

Invariants:
- Reasons are counted from ``rejects.jsonl`` (streamed: memory grows with the number of distinct
  reasons, not of rows), grouped by field and by the reason with its row and line numbers
  replaced by ``N``, so one mistake repeated on every row counts as one reason.
- With no explicit share, a run whose every row is rejected is refused; a share ``f`` refuses a
  run with more than ``f`` of its rows rejected. Both are checked before any batch is created.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

_NUMBERED = re.compile(r"\b(row|line|rows|lines) \d+\b")
_ROW_PREFIX = re.compile(r"^row N: ")
TOP_REASONS = 3


class TooManyRejectsError(ValueError):
    """Too many input rows were rejected for the run to be worth sending; nothing was sent."""


def _reason_key(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    reason = _ROW_PREFIX.sub("", _NUMBERED.sub(r"\1 N", str(error.get("message") or "")))
    field = error.get("field")
    return f"{field}: {reason}" if field else reason


def reject_reasons(path: Any, top: int = TOP_REASONS) -> dict[str, int]:
    """The ``top`` most frequent reject reasons in the rejects file at ``path`` with their counts."""
    if not path.exists():
        return {}
    counts: Counter[str] = Counter()
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                counts[_reason_key(json.loads(line))] += 1
    return dict(counts.most_common(top))


def describe_reasons(reasons: dict[str, int]) -> str:
    return "; ".join(f"{count} × {reason}" for reason, count in reasons.items())


def check_rejected_share(
    inputs: int, rejected: int, max_rejected_fraction: float | None, rejects_path: Any
) -> None:
    """Raise :class:`TooManyRejectsError` when the rejects are over the accepted share."""
    if inputs <= 0 or rejected <= 0:
        return
    if max_rejected_fraction is None:
        over = rejected >= inputs
        rule = "every row was rejected"
    else:
        over = rejected / inputs > max_rejected_fraction
        rule = f"over max_rejected_fraction={max_rejected_fraction:g}"
    if not over:
        return
    reasons = describe_reasons(reject_reasons(rejects_path))
    raise TooManyRejectsError(
        f"{rejected} of {inputs} input rows were rejected ({rule}); nothing was sent. Top reasons: "
        f"{reasons}. See {rejects_path} for each row; fix the task's options, template or data "
        "(or raise max_rejected_fraction to send the rest anyway)."
    )
