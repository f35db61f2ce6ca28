"""Filtering, paging, charts and CSV over run-index entries (no Airflow, no I/O).

Every function takes the entries a user may read (the caller has already dropped the others) and
never adds anything that is not in an entry: what the page shows is what the index holds.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

COST_CENTRE_TAG = "cost_centre"
NO_VALUE = "(none)"

CSV_COLUMNS = [
    "dag_id",
    "run_id",
    "group",
    "provider",
    "models",
    "rows",
    "succeeded",
    "errored",
    "rejected",
    "dead_letter",
    "batch_usd",
    "standard_usd",
    "savings_usd",
    "completion_s",
    "completed_at",
    "cost_centre",
    "batch_ids",
]


@dataclass(frozen=True)
class RunFilter:
    """Exact-match filters (empty means any) and an inclusive range of completion days (UTC)."""

    dag_id: str = ""
    provider: str = ""
    model: str = ""
    cost_centre: str = ""
    date_from: str = ""
    date_to: str = ""

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.dag_id and entry.get("dag_id") != self.dag_id:
            return False
        if self.provider and entry.get("provider") != self.provider:
            return False
        if self.model and self.model not in (entry.get("models") or []):
            return False
        if self.cost_centre and cost_centre(entry) != self.cost_centre:
            return False
        day = completion_day(entry)
        if self.date_from and (not day or day < self.date_from):
            return False
        return not (self.date_to and (not day or day > self.date_to))


def cost_centre(entry: dict[str, Any]) -> str:
    return (entry.get("tags") or {}).get(COST_CENTRE_TAG) or NO_VALUE


def completion_day(entry: dict[str, Any]) -> str:
    return (entry.get("completed_at") or "")[:10]


def select(entries: Iterable[dict[str, Any]], flt: RunFilter) -> list[dict[str, Any]]:
    """Matching entries, latest completion first."""
    rows = [e for e in entries if flt.matches(e)]
    rows.sort(key=lambda e: (e.get("completed_at") or "", e.get("dag_id"), e.get("run_id")), reverse=True)
    return rows


def facets(entries: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """The values each filter can take, from the entries the user may read."""
    values: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        values["dag_id"].add(e["dag_id"])
        values["provider"].add(e["provider"])
        values["model"].update(e.get("models") or [])
        values["cost_centre"].add(cost_centre(e))
    return {k: sorted(v) for k, v in values.items()}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(rows),
        "rows": sum(e.get("rows", 0) for e in rows),
        "batch_usd": round(sum(e.get("batch_usd", 0.0) for e in rows), 6),
        "standard_usd": round(sum(e.get("standard_usd", 0.0) for e in rows), 6),
        "savings_usd": round(sum(e.get("savings_usd", 0.0) for e in rows), 6),
    }


def charts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Daily spend vs synchronous equivalent, savings by cost centre and by model, and the
    completion-time distribution (minutes: p50, p90, max, count) per provider and model."""
    daily: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_centre: dict[str, float] = defaultdict(float)
    by_model: dict[str, float] = defaultdict(float)
    durations: dict[str, list[float]] = defaultdict(list)
    for e in rows:
        day = completion_day(e) or NO_VALUE
        daily[day][0] += e.get("batch_usd", 0.0)
        daily[day][1] += e.get("standard_usd", 0.0)
        by_centre[cost_centre(e)] += e.get("savings_usd", 0.0)
        models = e.get("models") or [NO_VALUE]
        for m in models:  # a multi-model run's savings are split evenly: the index has no per-model cost
            by_model[m] += e.get("savings_usd", 0.0) / len(models)
        for b in e.get("batches") or []:
            if b.get("seconds") is not None:
                durations[f"{e['provider']} · {b.get('model') or NO_VALUE}"].append(b["seconds"] / 60)
    days = sorted(daily)
    return {
        "daily": {
            "days": days,
            "batch_usd": [round(daily[d][0], 6) for d in days],
            "standard_usd": [round(daily[d][1], 6) for d in days],
        },
        "savings_by_cost_centre": _ranked(by_centre),
        "savings_by_model": _ranked(by_model),
        "completion_minutes": {k: _spread(v) for k, v in sorted(durations.items())},
    }


def _ranked(values: dict[str, float]) -> dict[str, list[Any]]:
    ordered = sorted(values.items(), key=lambda kv: kv[1], reverse=True)
    return {"labels": [k for k, _ in ordered], "values": [round(v, 6) for _, v in ordered]}


def _spread(minutes: list[float]) -> dict[str, float]:
    minutes = sorted(minutes)
    if len(minutes) == 1:
        p50 = p90 = minutes[0]
    else:
        cuts = statistics.quantiles(minutes, n=10, method="inclusive")
        p50, p90 = cuts[4], cuts[8]
    return {"p50": round(p50, 2), "p90": round(p90, 2), "max": round(minutes[-1], 2), "count": len(minutes)}


def _safe_cell(value: Any) -> Any:
    """Cells a spreadsheet would run as a formula are quoted (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_lines(rows: Iterable[dict[str, Any]], *, per_chunk: int = 1000) -> Iterator[str]:
    """The filtered table as CSV, header first, one run per line, ``per_chunk`` lines a chunk."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for n, e in enumerate(rows, 1):
        if n % per_chunk == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        record = {
            **e,
            "models": " ".join(e.get("models") or []),
            "cost_centre": cost_centre(e),
            "batch_ids": " ".join(b["id"] for b in e.get("batches") or []),
        }
        writer.writerow([_safe_cell(record.get(c, "")) for c in CSV_COLUMNS])
    yield buf.getvalue()
