"""The page's query functions on hand-made entries: filters, charts and CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from batch_provider.ui.runs_query import RunFilter, charts, csv_lines, facets, select, totals


def entry(run: str, day: str, **extra: Any) -> dict[str, Any]:
    base = {
        "dag_id": "d",
        "run_id": run,
        "group": "g",
        "provider": "openai",
        "models": ["m1"],
        "rows": 10,
        "batch_usd": 1.0,
        "standard_usd": 2.0,
        "savings_usd": 1.0,
        "tags": {"cost_centre": "ops"},
        "completed_at": f"{day}T12:00:00+00:00",
        "batches": [{"id": f"b-{run}", "model": "m1", "seconds": 600.0}],
    }
    return {**base, **extra}


ENTRIES = [
    entry("a", "2026-11-01"),
    entry("b", "2026-11-02", models=["m1", "m2"], savings_usd=4.0, tags={}),
    entry("c", "2026-11-03", provider="anthropic", batches=[{"id": "x", "model": "m2", "seconds": 3000.0}]),
]


def test_date_range_is_inclusive_and_rows_are_latest_first() -> None:
    rows = select(ENTRIES, RunFilter(date_from="2026-11-02", date_to="2026-11-03"))
    assert [r["run_id"] for r in rows] == ["c", "b"]
    assert [r["run_id"] for r in select(ENTRIES, RunFilter(model="m2"))] == ["b"]
    assert [r["run_id"] for r in select(ENTRIES, RunFilter(cost_centre="(none)"))] == ["b"]


def test_charts_totals_and_facets() -> None:
    c = charts(ENTRIES)
    assert c["daily"]["days"] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert c["savings_by_cost_centre"] == {"labels": ["(none)", "ops"], "values": [4.0, 2.0]}
    assert dict(zip(*c["savings_by_model"].values(), strict=True)) == {"m1": 4.0, "m2": 2.0}
    assert c["completion_minutes"]["anthropic · m2"] == {"p50": 50.0, "p90": 50.0, "max": 50.0, "count": 1}
    assert c["completion_minutes"]["openai · m1"]["count"] == 2
    assert totals(ENTRIES)["savings_usd"] == 6.0
    assert facets(ENTRIES)["cost_centre"] == ["(none)", "ops"]


def test_csv_has_every_row_and_quotes_formula_cells() -> None:
    evil = entry("=HYPERLINK(\"http://x\")", "2026-11-04")
    text = "".join(csv_lines([*ENTRIES, evil], per_chunk=2))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["run_id"] for r in rows][:3] == ["a", "b", "c"]
    assert rows[3]["run_id"].startswith("'=")
    assert rows[1]["models"] == "m1 m2" and rows[0]["batch_ids"] == "b-a"
