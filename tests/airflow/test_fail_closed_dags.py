"""Fail closed in real DAG runs (``dag.test()`` against the emulator): an empty input skips wait,
collect and retry and the run succeeds; literal records reach the provider as written; a templated
argument reading a connection fails the submit before any batch; every templated argument of every
batch task is checked for the same."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from dagutil import load_dags, task_states, xcom
from run_support import part_files, part_text

pytestmark = pytest.mark.usefixtures("airflow_db")

SECRET = "pw-" + secrets.token_hex(12)


@pytest.fixture
def secret_conn(monkeypatch, llm_conns, run_root):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FC_SECRET", json.dumps({"conn_type": "generic", "host": "x", "password": SECRET})
    )
    return llm_conns


def created(emu: Any) -> int:
    return sum(int(v) for v in emu.stats()["batches_created"].values())


def test_empty_input_skips_wait_collect_retry_and_the_run_succeeds(secret_conn):
    run = load_dags("test_dags/fail_closed.py").empty.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states["no_rows"] == "success"
    for task in ("submit", "wait", "collect", "retry"):
        assert states[f"enrich.{task}"] == "skipped", states
    assert created(secret_conn) == 0


def test_literal_records_reach_the_provider_unrendered(secret_conn):
    run = load_dags("test_dags/fail_closed.py").literal.test()
    assert str(run.state) == "success", task_states(run)
    folder = Path(xcom(run, "enrich.retry")["run_path"].removeprefix("file://"))
    sent = "".join(part_text(p) for p in part_files(folder / "attempt-1" / "requests"))
    # Lines keep the rows' order (t2, t3); their custom_ids are wire ids.
    prompts = [json.loads(line)["params"]["messages"][0]["content"] for line in sent.splitlines()]
    assert prompts == [
        "Summarise: key is {{ conn.fc_secret.password }}",
        "Summarise: seven sevens are {{ 7*7 }}",
    ]
    assert SECRET not in sent
    results = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["t2", "t3"]
    assert created(secret_conn) == 1


def test_connection_in_a_templated_argument_fails_before_any_batch(secret_conn):
    run = load_dags("test_dags/fail_closed.py").conn_in_argument.test()
    states = task_states(run)
    assert str(run.state) == "failed", states
    assert states["enrich.submit"] == "failed", states
    assert created(secret_conn) == 0


def _operators() -> list[Any]:
    """One of each batch task, every templated argument reading the secret connection."""
    from batch_provider.operators import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator
    from batch_provider.sensors.batch import BatchSensor

    read = "{{ conn.fc_secret.password }}"
    submit = SubmitBatchOperator(
        task_id="submit", records=[{"id": "t1", "text": "x"}], prompt_template="{{ text }}", provider="openai"
    )
    built = [
        submit,
        CollectBatchOperator(task_id="collect", handle={}),
        RetryBatchOperator(task_id="retry", handle={}),
        BatchSensor(task_id="wait", handle={}),
    ]
    cases = []
    for op in built:
        for field in op.template_fields:
            if field == "records":
                continue
            value: Any = {"tag": read} if field == "metadata" else read
            cases.append((op, field, value))
    return cases


def _context() -> dict[str, Any]:
    from airflow.sdk.execution_time.context import ConnectionAccessor

    return {"conn": ConnectionAccessor(), "ds": "2026-01-01", "params": {}}


@pytest.mark.parametrize(
    "case", _operators(), ids=lambda c: f"{type(c[0]).__name__}.{c[1]}" if isinstance(c, tuple) else ""
)
def test_no_templated_argument_can_read_a_connection(case, monkeypatch):
    from batch_provider.operators._templating import ConnectionInTemplateError

    monkeypatch.setenv(
        "AIRFLOW_CONN_FC_SECRET", json.dumps({"conn_type": "generic", "host": "x", "password": SECRET})
    )
    op, field, value = case
    setattr(op, field, value)
    with pytest.raises(ConnectionInTemplateError) as caught:
        op.render_template_fields(_context())
    assert "conn_id" in str(caught.value) and SECRET not in str(caught.value)
    assert SECRET not in json.dumps({f: getattr(op, f) for f in op.template_fields}, default=str)


def test_literal_records_stay_literal_and_an_xcom_arg_still_resolves(monkeypatch):
    from batch_provider.operators import SubmitBatchOperator

    monkeypatch.setenv(
        "AIRFLOW_CONN_FC_SECRET", json.dumps({"conn_type": "generic", "host": "x", "password": SECRET})
    )
    records = [
        {"id": "t2", "text": "key is {{ conn.fc_secret.password }}"},
        {"id": "t3", "text": "{{ 7*7 }}"},
    ]
    op = SubmitBatchOperator(task_id="s", records=records, prompt_template="{{ text }}", provider="openai")
    op.render_template_fields(_context())
    assert op.records == records

    class Resolved:
        """Stands for an XComArg (the DAG runs above resolve a real one): resolved, not rendered."""

        def resolve(self, context: Any) -> list[dict[str, str]]:
            return [{"id": "x1", "text": "{{ 7*7 }}"}]

    op = SubmitBatchOperator(
        task_id="s2", records=Resolved(), prompt_template="{{ text }}", provider="openai"
    )
    op.render_template_fields(_context())
    assert op.records == [{"id": "x1", "text": "{{ 7*7 }}"}]


def test_llm_batch_group_passes_the_fail_closed_options_to_submit():
    from datetime import datetime

    from airflow.sdk import DAG

    from batch_provider.task_group import llm_batch_group

    with DAG("fail_closed_options", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        llm_batch_group(
            "g",
            provider="anthropic",
            records=[{"id": "t1", "text": "x"}],
            prompt_template="{{ text }}",
            system=["shared policy", "{{ text }}"],
            cache_system_prompt=True,
            max_rejected_fraction=0.05,
            on_empty="fail",
            render_missing_as_empty=True,
            extra={"top_k": 3},
        )
    submit = dag.get_task("g.submit")
    assert submit.max_rejected_fraction == 0.05 and submit.on_empty == "fail"
    assert submit.render_missing_as_empty and submit.cache_system_prompt and submit.extra == {"top_k": 3}
    with (
        DAG("fail_closed_bad_option", schedule=None, start_date=datetime(2026, 1, 1)),
        pytest.raises(ValueError, match="on_empty"),
    ):
        llm_batch_group("h", records=[], prompt_template="x", on_empty="ignore")
