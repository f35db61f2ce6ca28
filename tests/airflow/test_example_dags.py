"""Every example DAG end to end with ``dag.test()`` against the emulator (no real key)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagutil import load_dags, read_jsonl, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(autouse=True)
def fast_examples(monkeypatch, llm_conns, run_root):
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    return llm_conns


def run_folder(run_root: Path, dag_id: str, group: str) -> Path:
    folders = [p for p in (run_root / dag_id).glob(f"*/{group}") if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_nightly_ticket_enrichment_and_report(run_root, llm_conns):
    module = load_dags("examples/nightly_ticket_enrichment.py")
    run = module.nightly.test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}
    folder = run_folder(run_root, "nightly_ticket_enrichment", "enrich")
    results = read_jsonl(folder / "results.jsonl")
    assert len(results) == 30
    categories = {json.loads(r["output_text"])["category"] for r in results}
    assert categories <= set(module.TICKET_SCHEMA["properties"]["category"]["enum"])
    summary = xcom(run, "enrich.retry")
    assert summary["succeeded"] == 30 and summary["accounted"]
    assert xcom(run, "enrich.submit")["batches"][0]["batch_id"].startswith("batch_")
    # the results asset event names the run's files; the report DAG (scheduled on it) reads them
    extra = asset_events(module.ENRICHED_TICKETS.uri)[-1]
    assert extra["succeeded"] == 30 and extra["results"].endswith("results.jsonl")
    report = load_dags("examples/nightly_ticket_enrichment.py").report_dag
    report_run = report.test()
    assert str(report_run.state) == "success", task_states(report_run)
    written = json.loads((folder / "report.json").read_text())
    assert written["tickets"] == 30 and sum(written["by_category"].values()) == 30


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=uri).one()
        rows = session.query(AssetEvent).filter_by(asset_id=asset.id).order_by(AssetEvent.id).all()
        return [row.extra for row in rows]
