"""Every example DAG end to end with ``dag.test()`` against the emulator (no real key)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagutil import load_dags, read_jsonl, task_states, xcom
from run_support import sent_requests

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


def test_document_summarisation_with_anthropic(run_root, llm_conns):
    run = load_dags("examples/document_summarisation.py").dag.test()
    assert str(run.state) == "success", task_states(run)
    folder = run_folder(run_root, "document_summarisation", "summarise")
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(
        p.stem for p in (Path(__file__).resolve().parents[2] / "dags" / "data" / "documents").glob("*.md")
    )
    assert all(r["provider"] == "anthropic" and r["output_text"] for r in results)
    assert llm_conns.stats()["batches_created"] == {"openai": 0, "anthropic": 1}


def test_historical_backfill_interval_rerun_reattaches(run_root, llm_conns):
    dag = load_dags("examples/historical_backfill.py").dag
    first = dag.test(logical_date=datetime(2026, 3, 1, tzinfo=UTC))
    assert str(first.state) == "success", task_states(first)
    second = dag.test(logical_date=datetime(2026, 4, 1, tzinfo=UTC))
    assert str(second.state) == "success", task_states(second)
    folders = sorted((run_root / "historical_backfill").glob("*/tag_reviews"))
    assert len(folders) == 2  # each interval its own run folder
    ids = [{r["custom_id"][:9] for r in read_jsonl(f / "results.jsonl")} for f in folders]
    assert {"R-202602-", "R-202603-"} == {next(iter(i)) for i in ids}
    assert llm_conns.stats()["batches_created"]["openai"] == 2
    # the same interval run again (same run id, as a cleared run or a reprocessing backfill):
    # the submit task re-attaches to the batch in its ledger instead of paying for a new one
    submit = dag.get_task("tag_reviews.submit")
    handle = xcom(first, "tag_reviews.submit")
    again = submit.execute(fake_context(first, submit, {"data_interval_start": first.data_interval_start}))
    assert again["batches"] == handle["batches"]
    assert llm_conns.stats()["batches_created"]["openai"] == 2


def fake_context(dag_run, task, extra):
    """Enough of a task context to call a rendered operator's execute directly."""
    from unittest import mock

    ti = mock.MagicMock(dag_id=dag_run.dag_id, task_id=task.task_id, map_index=-1)
    context = {"ti": ti, "run_id": dag_run.run_id, "params": {}, **extra}
    task.render_template_fields(context)
    return context


def test_manual_batch_params(run_root, llm_conns):
    module = load_dags("examples/manual_batch.py")
    conf = {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "prompt": "One-line summary: {{ subject }}",
        "max_attempts": 2,
    }
    run = module.dag.test(run_conf=conf)
    assert str(run.state) == "success", task_states(run)
    handle = xcom(run, "batch.submit")
    assert handle["provider"] == "anthropic" and handle["conn_id"] == "llm_anthropic_default"
    results = read_jsonl(run_folder(run_root, "manual_batch", "batch") / "results.jsonl")
    assert len(results) == 30 and {r["model"] for r in results} == {"claude-haiku-4-5"}


def test_manual_batch_params_are_validated():
    from airflow.sdk.exceptions import ParamValidationError

    dag = load_dags("examples/manual_batch.py").dag
    assert dag.params.validate()["provider"] == "openai"  # the defaults are valid
    for name, bad in (("provider", "mistral"), ("max_attempts", 9), ("input_path", "no-scheme")):
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(bad)


def test_records_from_xcom_and_native_requests_file(run_root, llm_conns):
    run = load_dags("test_dags/input_kinds.py").dag.test()
    assert str(run.state) == "success", task_states(run)
    from_xcom = read_jsonl(run_folder(run_root, "input_kinds", "from_xcom") / "results.jsonl")
    assert sorted(r["custom_id"] for r in from_xcom) == [f"q{i}" for i in range(5)]
    native = read_jsonl(run_folder(run_root, "input_kinds", "native") / "results.jsonl")
    assert sorted(r["custom_id"] for r in native) == [f"n{i}" for i in range(4)]
    assert llm_conns.stats()["batches_created"]["openai"] == 2


def test_structured_ticket_triage_validates_answers_against_a_pydantic_model(run_root, llm_conns):
    llm_conns.set_faults({"batch_faults": "invalid_output=0.3"})  # some answers come back invalid
    module = load_dags("examples/structured_ticket_triage.py")
    run = module.dag.test()
    assert str(run.state) == "success", task_states(run)
    folder = run_folder(run_root, "structured_ticket_triage", "triage")
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = manifest["inputs"]
    results = read_jsonl(folder / "results.jsonl")
    dead = read_jsonl(folder / "dead_letter.jsonl")
    assert len(results) + len(dead) == rows and manifest["accounted"]
    assert manifest["invalid_output"] > 0 and {d["status"] for d in dead} <= {"invalid_output"}
    first = read_jsonl(folder / "attempt-1" / "errors.jsonl")
    assert first and all(r["status"] == "invalid_output" for r in first)
    assert len(sent_requests(folder / "attempt-2" / "requests")) == len(first)
    assert all(module.Triage.model_validate(r["parsed"]) for r in results)
    report = xcom(run, "triage_report")
    assert report["triaged"] == len(results) and sum(report["by_category"].values()) == len(results)
    assert report["invalid_output"] == manifest["invalid_output"]
