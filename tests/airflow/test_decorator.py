"""``@task.batch_llm``: registered through provider_info, expands to submit >> wait >> collect >>
retry, and runs end to end with ``dag.test()`` against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagutil import load_dags, read_jsonl, task_states, xcom
from run_support import sent_requests

from batch_provider.decorators.batch_llm import BatchLLMSubmitOperator, batch_llm_task, rows_from_return

REPO = Path(__file__).resolve().parents[2]
GROUP_TASKS = ["submit", "wait", "collect", "retry"]


@pytest.fixture(autouse=True)
def fast_examples(monkeypatch):
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")


def test_registered_as_task_batch_llm():
    from airflow.sdk import task

    from batch_provider.provider_info import PROVIDER_INFO

    # common-ai's decorator is `llm_batch`: decorator names are global, so ours must differ
    assert [d["name"] for d in PROVIDER_INFO["task-decorators"]] == ["batch_llm"]
    assert task.batch_llm is batch_llm_task


def test_the_decorator_builds_the_group_with_its_options():
    dag = load_dags("examples/taskflow_batch.py").dag
    ids = sorted(dag.task_ids)
    assert ids == sorted([*(f"draft_replies.{t}" for t in GROUP_TASKS), "count_drafts"])
    submit = dag.get_task("draft_replies.submit")
    assert isinstance(submit, BatchLLMSubmitOperator)
    assert submit.provider == "anthropic" and submit.max_tokens == 250 and submit.retries == 2
    assert "records" not in submit.template_fields  # returned rows are not rendered by Airflow
    assert dag.get_task("draft_replies.retry").max_attempts == 2
    assert dag.get_task("count_drafts").upstream_task_ids == {"draft_replies.retry"}
    assert dag.get_task("draft_replies.wait").upstream_task_ids == {"draft_replies.submit"}


@pytest.mark.usefixtures("airflow_db")
def test_taskflow_example_end_to_end(run_root, llm_conns):
    run = load_dags("examples/taskflow_batch.py").dag.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"} and len(states) == 5
    day = (REPO / "dags/data/tickets/2026-11-19.jsonl").read_text()
    tickets = [json.loads(line) for line in day.splitlines()]
    wanted = [t["id"] for t in tickets if t["channel"] in ("chat", "phone")]
    assert 0 < len(wanted) < len(tickets)
    summary = xcom(run, "draft_replies.retry")
    assert summary["succeeded"] == len(wanted) and summary["accounted"]
    results = read_jsonl(Path(summary["files"]["results"].removeprefix("file://")))
    assert sorted(r["custom_id"] for r in results) == sorted(wanted)
    assert xcom(run, "count_drafts")["drafts"] == len(wanted)
    assert llm_conns.stats()["batches_created"]["anthropic"] == 1


@pytest.mark.usefixtures("airflow_db")
def test_prompt_strings_are_sent_as_written_and_requests_as_given(run_root, llm_conns):
    run = load_dags("test_dags/decorator_inputs.py").dag.test()
    assert str(run.state) == "success", task_states(run)
    sent = [
        request
        for folder in sorted(run_root.glob("decorator_inputs/*/prompts/attempt-1/requests"))
        for request in sent_requests(folder)
    ]
    assert len(sent) == 3 and all(line["custom_id"].startswith("bp") for line in sent)  # wire ids
    prompts = xcom(run, "prompts.retry")
    answered = read_jsonl(Path(prompts["files"]["results"].removeprefix("file://")))
    assert sorted(r["custom_id"] for r in answered) == ["row-1", "row-2", "row-3"]
    messages = sent[0]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "Answer in one line."}
    assert messages[-1]["content"] == "Explain tides; keep {{ ds }} and {% raw %} as written."
    ready = xcom(run, "ready_requests.retry")
    assert ready["succeeded"] == 2 and ready["accounted"]
    ids = sorted(r["custom_id"] for r in read_jsonl(Path(ready["files"]["results"].removeprefix("file://"))))
    assert ids == ["req-a", "req-b"]


def test_return_values_other_than_a_list_of_one_kind_are_refused():
    assert rows_from_return(["a"], kind="embedding") == [{"input": "a"}]
    with pytest.raises(TypeError, match="returned str; return a list"):
        rows_from_return("one prompt", kind="chat")
    with pytest.raises(TypeError, match=r"item 1 of the returned list is str after dict items"):
        rows_from_return([{"id": 1}, "two"], kind="chat")
    with pytest.raises(TypeError, match=r"item 0 of the returned list is int"):
        rows_from_return([3], kind="chat")


def test_an_input_option_is_refused_at_parse_time():
    from airflow.sdk import DAG

    with DAG("decorator_bad_input", schedule=None), pytest.raises(ValueError, match="input_path"):

        @batch_llm_task(provider="openai", input_path="file:///x.jsonl", prompt_template="{{ q }}")
        def rows() -> list[dict]:
            return []

        rows()


def test_mapping_the_decorator_itself_points_to_a_mapped_task_group():
    @batch_llm_task(provider="openai", prompt_template="{{ q }}")
    def rows(day: str) -> list[dict]:
        return []

    with pytest.raises(TypeError, match="@task_group"):
        rows.expand(day=["a", "b"])


def test_prompt_strings_with_a_template_are_refused_before_anything_is_sent():
    from unittest import mock

    from airflow.sdk import DAG

    with DAG("decorator_strings_and_template", schedule=None):

        @batch_llm_task(provider="openai", prompt_template="{{ q }}")
        def rows() -> list[str]:
            return ["a prompt"]

        summary = rows()
    submit = summary.operator.dag.get_task("rows.submit")
    with pytest.raises(TypeError, match="returned prompt strings"):
        submit.execute({"ti": mock.MagicMock(map_index=-1), "run_id": "r"})
