"""The result cache, the cost budget, metrics and the cost line through the operators and the
task group, against the emulator.

Named to run after ``test_example_dags``: the first ``dag.test()`` in a session registers every
example DAG's results Asset under that test's run path, and that test reads its Asset's events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from dagutil import load_dags, read_jsonl, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

CONF = {
    "provider": "openai",
    "model": "gpt-6-luna",
    "prompt": "One-line summary: {{ subject }}",
    "max_attempts": 2,
}


@pytest.fixture(autouse=True)
def fast_examples(monkeypatch, llm_conns, run_root):
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    return llm_conns


class StatsRecorder:
    """Stands in for Airflow's ``Stats``: remembers every incr and timing call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, str]]] = []

    def incr(self, name: str, count: int = 1, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("incr", name, count, dict(tags or {})))

    def timing(self, name: str, value: Any, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("timing", name, value, dict(tags or {})))

    def named(self, name: str) -> list[tuple[str, str, Any, dict[str, str]]]:
        return [c for c in self.calls if c[1] == name]


@pytest.fixture
def stats(monkeypatch) -> StatsRecorder:
    recorder = StatsRecorder()
    monkeypatch.setattr("batch_provider.metrics._stats", lambda: recorder)
    return recorder


def test_second_run_of_unchanged_input_is_served_from_the_cache(run_root, llm_conns, stats):
    dag = load_dags("examples/manual_batch.py").dag
    first = dag.test(run_conf=CONF)
    assert str(first.state) == "success", task_states(first)
    assert llm_conns.stats()["batches_created"]["openai"] == 1
    assert xcom(first, "batch.retry")["cached"] == 0
    assert any((run_root / "_cache" / "indexes").glob("*.idx"))  # successes stored under <run_path>/_cache

    second = dag.test(run_conf=CONF)  # a new run id: a new run folder, same requests
    assert str(second.state) == "success", task_states(second)
    assert llm_conns.stats()["batches_created"]["openai"] == 1  # nothing sent again
    assert xcom(second, "batch.submit")["batches"] == []
    final = xcom(second, "batch.retry")
    assert final["succeeded"] == 30 and final["cached"] == 30 and final["accounted"]
    folder = Path(final["run_path"].removeprefix("file://"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["cached"] == 30 and manifest["cache_savings_usd"] > 0
    assert len(read_jsonl(folder / "results.jsonl")) == 30

    # metrics: one batch counted (the first run's), tagged with the DAG and task; wait times per
    # ended batch; one finished run per retry task
    created = stats.named("llm_batch.openai.batches_submitted")
    assert [(c[2], c[3]) for c in created] == [(1, {"dag_id": "manual_batch", "task_id": "batch.submit"})]
    assert stats.named("llm_batch.openai.requests_submitted")[0][2] == 30
    waits = stats.named("llm_batch.openai.batch_wait")
    assert len(waits) == 1 and waits[0][2].total_seconds() >= 0 and waits[0][3]["ending"] == "completed"
    finished = stats.named("llm_batch.openai.runs_finished")
    assert len(finished) == 2 and {c[3]["task_id"] for c in finished} == {"batch.retry"}
    cost = stats.named("llm_batch.openai.cost_microusd")
    assert cost[0][2] > 0 and cost[1][2] == 0  # the cached run paid nothing


def test_use_cache_false_sends_again(run_root, llm_conns):
    module = load_dags("examples/manual_batch.py")
    assert str(module.dag.test(run_conf=CONF).state) == "success"
    for task_id in ("batch.submit", "batch.collect", "batch.retry"):
        module.dag.get_task(task_id).use_cache = False
    again = module.dag.test(run_conf=CONF)
    assert str(again.state) == "success", task_states(again)
    assert llm_conns.stats()["batches_created"]["openai"] == 2
    assert xcom(again, "batch.retry")["cached"] == 0


def submit_context(run_id: str) -> dict[str, Any]:
    return {
        "ti": mock.MagicMock(dag_id="budget", task_id="submit", map_index=-1),
        "run_id": run_id,
        "params": {},
    }


def test_max_cost_usd_fails_the_submit_before_any_batch(run_root, llm_conns, capfd):
    from airflow.sdk.exceptions import AirflowFailException

    from batch_provider.core.submission import BudgetExceededError
    from batch_provider.operators import SubmitBatchOperator

    records = [{"id": f"r{i}", "text": "word " * 200} for i in range(20)]
    op = SubmitBatchOperator(
        task_id="submit",
        provider="openai",
        records=records,
        prompt_template="Summarise: {{ text }}",
        model="gpt-6-luna",
        max_tokens=4000,
        max_cost_usd=0.0001,
    )
    with pytest.raises(AirflowFailException, match="max_cost_usd") as caught:
        op.execute(submit_context("over_budget"))
    assert isinstance(caught.value, BudgetExceededError)  # fails without Airflow retries
    assert "nothing was sent" in "".join(capfd.readouterr())  # the task log shows why
    stats = llm_conns.stats()
    assert stats["batches_created"]["openai"] == 0 and stats["files_uploaded"] == 0

    op.max_cost_usd = 100.0
    handle = op.execute(submit_context("within_budget"))
    assert len(handle["batches"]) == 1 and llm_conns.stats()["batches_created"]["openai"] == 1


def test_cost_line_names_unpriced_models_and_cache_hits():
    from batch_provider.core.collection import RunSummary
    from batch_provider.core.pricing import Cost
    from batch_provider.operators.batch import log_cost

    summary = RunSummary(
        run_path="/tmp/x",
        provider="openai",
        attempts=1,
        inputs=3,
        rejected=0,
        succeeded=3,
        unresolved=0,
        accounted=True,
        cached=2,
        cache_savings_usd=0.25,
        cost=Cost(batch_usd=1.5, standard_usd=3.0, unpriced_tokens=40, unpriced_models=["mystery-1"]),
    )
    summary.usage.input_tokens, summary.usage.output_tokens = 1000, 200
    log = mock.MagicMock()
    log_cost(log, summary)
    (fmt, *args), _ = log.info.call_args
    line = fmt % tuple(args)
    assert line.startswith(
        "1000 input / 200 output tokens, $1.5000 at batch prices (synchronous $3.0000, saved $1.5000)"
    )
    assert "40 tokens of unpriced models" in line and "mystery-1" in line
    assert "2 answered from the cache, saving $0.2500" in line
    plain = summary.model_copy(update={"cached": 0, "cost": Cost(batch_usd=1.0, standard_usd=2.0)})
    log_cost(log, plain)
    (fmt, *args), _ = log.info.call_args
    assert "unpriced" not in fmt % tuple(args) and "cache" not in fmt % tuple(args)


def test_collect_logs_the_cost_line(run_root, llm_conns, capfd):
    run = load_dags("examples/manual_batch.py").dag.test(run_conf=CONF)
    assert str(run.state) == "success", task_states(run)
    summary = xcom(run, "batch.collect")
    assert summary["cost"]["batch_usd"] > 0  # gpt-6-luna is in the price table
    logged = "".join(capfd.readouterr())
    assert f"${summary['cost']['batch_usd']:.4f} at batch prices (synchronous $" in logged


def test_task_docs_and_their_override():
    from datetime import datetime

    from airflow.sdk import DAG

    from batch_provider.task_group import TASK_DOCS, llm_batch_group

    with DAG("docs", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        llm_batch_group(
            "g", provider="openai", records=[], prompt_template="x", task_docs={"wait": "Custom."}
        )
    assert dag.get_task("g.submit").doc_md == TASK_DOCS["submit"]
    assert dag.get_task("g.wait").doc_md == "Custom."
    for task_id in ("submit", "collect", "retry"):
        assert dag.get_task(f"g.{task_id}").doc_md.count(".") >= 1
    assert dag.get_task("g.retry").cache_path is None and dag.get_task("g.collect").use_cache


def test_manual_batch_prompt_is_a_textarea():
    dag = load_dags("examples/manual_batch.py").dag
    assert dag.params.get_param("prompt").schema["format"] == "multiline"


def test_cache_path_and_ttl_reach_all_three_tasks(tmp_path: Path):
    from datetime import datetime, timedelta

    from airflow.sdk import DAG

    from batch_provider.task_group import llm_batch_group

    with DAG("cache_opts", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        llm_batch_group(
            "g",
            provider="openai",
            records=[],
            prompt_template="x",
            run_path=str(tmp_path),
            cache_ttl=timedelta(hours=2),
        )
    for task_id in ("submit", "collect", "retry"):
        cache = dag.get_task(f"g.{task_id}")._cache()
        assert str(cache.root).endswith(f"{tmp_path}/_cache") and cache.ttl == timedelta(hours=2)
