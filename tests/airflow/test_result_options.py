"""``keep_raw`` and ``results_format`` on ``llm_batch_group`` and ``@task.batch_llm``: given to
collect and retry, checked when the DAG is parsed, and honoured by a real run (``dag.test()``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagutil import load_dags, read_jsonl, task_states, xcom

from batch_provider.results import load_results
from batch_provider.task_group import llm_batch_group


def test_the_options_reach_collect_and_retry():
    dag = load_dags("test_dags/result_options.py").dag
    for group, fmt, raw in (("vectors", "parquet", False), ("raw_kept", "jsonl", True)):
        for task_id in ("collect", "retry"):
            op = dag.get_task(f"{group}.{task_id}")
            assert (op.results_format, op.keep_raw) == (fmt, raw)


def test_an_unknown_results_format_fails_the_dag_when_parsed():
    from airflow.sdk import DAG

    options = {"provider": "openai", "records": [{"q": "x"}], "prompt_template": "{{ q }}"}
    with DAG("bad_results_format", schedule=None), pytest.raises(ValueError, match="results_format 'csv'"):
        llm_batch_group("g", results_format="csv", **options)


@pytest.mark.usefixtures("airflow_db")
def test_parquet_embeddings_and_raw_bodies_through_a_dag_run(run_root, llm_conns):
    run = load_dags("test_dags/result_options.py").dag.test()
    assert str(run.state) == "success", task_states(run)

    vectors = xcom(run, "vectors.retry")
    path = Path(vectors["files"]["results"].removeprefix("file://"))
    assert path.name == "results.parquet" and vectors["results_format"] == "parquet"
    assert not path.with_name("results.jsonl").exists()
    table = pq.read_table(path)
    assert table.num_rows == vectors["succeeded"] == 3
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 1536)
    assert "raw" not in table.schema.names
    assert all(len(v) == 1536 for v in table.column("embedding").to_pylist())
    assert len(load_results(vectors)) == 3

    kept = xcom(run, "raw_kept.retry")
    results = read_jsonl(Path(kept["files"]["results"].removeprefix("file://")))
    assert sorted(r["custom_id"] for r in results) == ["a", "b"]
    assert all(r["raw"]["choices"][0]["message"]["content"] == r["output_text"] for r in results)
