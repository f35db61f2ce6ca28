"""``llm_batch_group`` in a mapped task group, and the batch operators mapped with
``.partial().expand()``: each map index is its own run (folder, handle, retry, dead letter, final
manifest), end to end with ``dag.test()`` against the emulator, a partial failure recovered by
the retry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow_setup import emulator_connections
from dagutil import load_dags, read_jsonl, task_states

from batch_provider.emulator.process import running_emulator

pytestmark = pytest.mark.usefixtures("airflow_db")

FEEDBACK = Path(__file__).resolve().parents[2] / "dags" / "data" / "feedback"
PARTIAL_FAILURE = {
    # a third of the rows meet a transient item error (recovered on resubmission), a tenth a
    # permanent one (dead letter)
    "batch_faults": "item_errors=0.3:429/500,item_errors=0.1:400",
    "item_recovery": 1.0,
}


@pytest.fixture
def fast_emulator(monkeypatch, run_root):
    """An emulator whose day passes in 3 s, the default connections on it, the partial failure set."""
    with running_emulator(time_factor=86400 / 3) as emu:
        for name, value in emulator_connections(emu.base_url).items():
            monkeypatch.setenv(name, value)
        emu.set_faults(PARTIAL_FAILURE)
        yield emu


def run_folders(run_root: Path, dag_id: str) -> list[Path]:
    """The DAG run folders of ``dag_id`` (beside them: the DAG's output-token calibration file)."""
    return [p for p in (run_root / dag_id).iterdir() if p.is_dir()]


def mapped_xcoms(dag_run: Any, task_id: str) -> dict[int, Any]:
    """map index → return value of every map index of ``task_id``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key="return_value")
            .all()
        )
        return {row.map_index: _value(row.value) for row in rows}


def _value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def assert_runs_per_map_index(run_root: Path, dag_run: Any, task_prefix: str, folder_of: Any) -> None:
    """Every map index has its own run folder holding exactly its file's rows, a final manifest
    that adds up, and a dead letter of permanent errors only; the retries recovered rows."""
    files = sorted(FEEDBACK.glob("*.jsonl"))
    submitted = mapped_xcoms(dag_run, f"{task_prefix}submit")
    finals = mapped_xcoms(dag_run, f"{task_prefix}retry")
    assert sorted(submitted) == sorted(finals) == list(range(len(files)))
    recovered = 0
    for index, path in enumerate(files):
        ids = {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}
        folder = folder_of(index)
        assert submitted[index]["run_path"].endswith(folder.name)
        assert finals[index]["run_path"] == submitted[index]["run_path"]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["accounted"] and manifest["finished"] and manifest["inputs"] == len(ids)
        results = read_jsonl(folder / "results.jsonl")
        dead = read_jsonl(folder / "dead_letter.jsonl")
        assert {r["custom_id"] for r in results} | {d["custom_id"] for d in dead} == ids
        assert len(results) + len(dead) == len(ids), "a row in two places"
        assert all(d["error"]["retryable"] is False for d in dead), dead
        assert manifest["succeeded"] == len(results) and manifest["dead_letter"] == len(dead)
        assert finals[index]["succeeded"] == len(results)
        recovered += sum(1 for r in results if r["attempt"] >= 2)
    assert recovered > 0, "no row was recovered by a retry"


def test_partitioned_example_maps_one_group_per_file(run_root, fast_emulator, monkeypatch):
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    run = load_dags("examples/partitioned_feedback.py").dag.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}, states
    (day,) = run_folders(run_root, "partitioned_feedback")

    def folder(index: int) -> Path:
        return day / f"tag_region.feedback.map-{index}"

    assert sorted(p.name for p in day.iterdir()) == [folder(i).name for i in range(3)]
    assert_runs_per_map_index(run_root, run, "tag_region.feedback.", folder)
    created = fast_emulator.stats()["batches_created"]["openai"]
    assert 3 < created <= 9  # one first batch per region, then only the regions that had failures


def test_mapped_operators_each_map_index_is_its_own_run(run_root, fast_emulator):
    run = load_dags("test_dags/mapped_operators.py").dag.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    (day,) = run_folders(run_root, "mapped_operators")
    assert_runs_per_map_index(run_root, run, "", lambda index: day / f"submit.map-{index}")


def test_handles_of_every_map_index_are_refused_with_what_to_do():
    from batch_provider.operators._common import parse_handle

    handle = {"run_path": "/x", "provider": "openai", "batches": []}
    with pytest.raises(ValueError, match=r"got 2 handles: the submit task is mapped, so map this task"):
        parse_handle([handle, handle])
