"""A mapped task group around the batch tasks: each map index has its own run folder, ledger and
batches, end to end with ``dag.test()`` against the emulator."""

from __future__ import annotations

import pytest
from dagutil import load_dags, read_jsonl, task_states

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_mapped_groups_run_each_index_in_its_own_folder(run_root, llm_conns):
    run = load_dags("test_dags/mapped_groups.py").dag.test()
    assert str(run.state) == "success", task_states(run)
    [base] = [p for p in (run_root / "mapped_groups").iterdir() if p.is_dir()]
    answers = {p.name: read_jsonl(p / "results.jsonl") for p in sorted(base.glob("per_team.answer.*"))}
    assert {k: sorted(r["custom_id"] for r in v) for k, v in answers.items()} == {
        "per_team.answer.map-0": ["a0", "a1", "a2"],
        "per_team.answer.map-1": ["b0"],
    }
    facts = {p.name: read_jsonl(p / "results.jsonl") for p in sorted(base.glob("per_topic.ask.*"))}
    assert sorted(facts) == ["per_topic.ask.map-0", "per_topic.ask.map-1"]
    assert all(sorted(r["custom_id"] for r in v) == ["row-1", "row-2"] for v in facts.values())
    assert llm_conns.stats()["batches_created"] == {"openai": 2, "anthropic": 2}
