"""Transient item errors (429/5xx) recover when the request is sent again, under a new custom_id
too; 400/422 stay. The decision is deterministic in the seed and the attempt, and the history it
rests on survives a restart and is emptied by a reset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from emu_helpers import chat_line, claude_request, create, read_jsonl

from batch_provider.emulator.faults import BatchFaults, item_error_code
from batch_provider.emulator.process import EmulatorProcess, running_emulator

KEY = "sk-emulator-test"
FAULTS = "item_errors=0.5:429/500/529"


def _openai_round(emu: EmulatorProcess, oai: openai.OpenAI, lines: list[dict[str, Any]]) -> dict[str, int]:
    """Run one batch of ``lines`` to its end: custom_id → error status (absent: succeeded)."""
    batch = create(oai, lines, faults=FAULTS)
    emu.advance(5000)
    batch = oai.batches.retrieve(batch.id)
    assert batch.status == "completed"
    errors = {x["custom_id"]: x["response"]["status_code"] for x in read_jsonl(oai, batch.error_file_id)}
    answered = {x["custom_id"] for x in read_jsonl(oai, batch.output_file_id)}
    assert len(errors) + len(answered) == len(lines)
    return errors


def _rows(n: int) -> list[dict[str, Any]]:
    rows = [chat_line(f"a1-{i:03d}", text=f"Classify row {i}") for i in range(n)]
    rows[1] = chat_line("emu-fail400-a1-001", text="Classify row 1")
    rows[2] = chat_line("emu-fail422-a1-002", text="Classify row 2")
    return rows


def _resend(rows: list[dict[str, Any]], failed: dict[str, int], attempt: int) -> list[dict[str, Any]]:
    """The failed rows again, each under a new custom_id (as a client with per-attempt ids does);
    the permanent directives stay in the new id."""
    out = []
    for row in rows:
        if row["custom_id"] in failed:
            new_id = row["custom_id"].replace(f"a{attempt - 1}-", f"a{attempt}-")
            out.append({**row, "custom_id": new_id})
    return out


@pytest.mark.parametrize("recovery", [1.0, 0.8, 0.0])
def test_resubmitted_transient_errors_recover_under_new_custom_ids(recovery: float) -> None:
    with running_emulator(time_factor=1.0, seed=3, extra_args=["--item-recovery", str(recovery)]) as emu:
        oai = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key=KEY, max_retries=0)
        rows = _rows(60)
        first = _openai_round(emu, oai, rows)
        transient = {cid for cid, code in first.items() if code not in (400, 422)}
        assert first["emu-fail400-a1-001"] == 400 and first["emu-fail422-a1-002"] == 422
        assert 10 <= len(transient) <= 50
        if recovery == 0.0:  # each sending draws as if it were the first: the same ids fail again
            again = _openai_round(emu, oai, [r for r in rows if r["custom_id"] in first])
            assert again == first
            return
        retry = _resend(rows, first, 2)
        second = _openai_round(emu, oai, retry)
        assert second["emu-fail400-a2-001"] == 400 and second["emu-fail422-a2-002"] == 422, "permanent"
        recovered = len(transient) - (len(second) - 2)
        if recovery == 1.0:
            assert recovered == len(transient)
        else:
            assert 0 < recovered < len(transient) or len(transient) < 5
            third = _openai_round(emu, oai, _resend(retry, second, 3))
            assert len(third) - 2 < len(second) - 2 or len(second) == 2, "a second resend recovers more"
        assert emu.stats()["faults"]["item_400"] >= 2  # counted on every sending


def test_recovery_is_deterministic_from_seed_and_attempt() -> None:
    outcomes = []
    for _ in range(2):
        with running_emulator(time_factor=1.0, seed=11) as emu:
            oai = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key=KEY, max_retries=0)
            rows = _rows(80)
            first = _openai_round(emu, oai, rows)
            second = _openai_round(emu, oai, _resend(rows, first, 2))
            outcomes.append((first, second))
    assert outcomes[0] == outcomes[1]
    first, second = outcomes[0]
    assert 0 < len(second) - 2 < len(first) - 2  # default 0.8: most recover, not all


def test_history_survives_a_restart_and_reset_empties_it(tmp_path: Path) -> None:
    data = tmp_path / "emu"
    rows = _rows(40)
    with running_emulator(time_factor=1.0, seed=5, data_dir=data, extra_args=["--item-recovery", "1"]) as emu:
        oai = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key=KEY, max_retries=0)
        first = _openai_round(emu, oai, rows)
    assert (data / "resends.jsonl").exists()
    with running_emulator(time_factor=1.0, seed=5, data_dir=data, extra_args=["--item-recovery", "1"]) as emu:
        oai = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key=KEY, max_retries=0)
        assert _openai_round(emu, oai, _resend(rows, first, 2)).keys() == {
            "emu-fail400-a2-001",
            "emu-fail422-a2-002",
        }
        emu.reset()
        again = _openai_round(emu, oai, rows)
        assert again == first, "after a reset the same requests are first sightings again"


def test_anthropic_resubmission_recovers(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    emu.set_faults({"item_recovery": 1.0})
    requests = [claude_request(f"b1-{i}", text=f"Summarise note {i}") for i in range(6)]
    requests[0] = claude_request("emu-fail529-b1-0", text="Summarise note 0")
    requests[1] = claude_request("emu-fail-b1-1", text="Summarise note 1")

    def run(reqs: list[dict[str, Any]]) -> dict[str, str]:
        batch = anth.messages.batches.create(requests=reqs)
        emu.advance(5000)
        return {r.custom_id: r.result.type for r in anth.messages.batches.results(batch.id)}

    first = run(requests)
    assert first["emu-fail529-b1-0"] == "errored" and first["emu-fail-b1-1"] == "errored"
    again = [
        {**requests[0], "custom_id": "emu-fail529-b2-0"},
        {**requests[1], "custom_id": "emu-fail-b2-1"},
    ]
    second = run(again)
    assert second == {"emu-fail529-b2-0": "succeeded", "emu-fail-b2-1": "errored"}


def test_item_recovery_setting_is_validated(emu: EmulatorProcess) -> None:
    bad = httpx.post(f"{emu.base_url}/_emu/faults", json={"item_recovery": 1.5})
    assert bad.status_code == 400 and "item_recovery" in bad.text
    assert emu.set_faults({"fault_rate": 0})["item_recovery"] == 0.8  # the CLI value is kept


def test_decision_rates() -> None:
    faults = BatchFaults(item_errors=[(1.0, (500,))])
    kept = [
        item_error_code(1, f"id{i}", faults, None, content="k", resent=1, recovery=0.8) for i in range(2000)
    ]
    assert 0.15 < kept.count(500) / 2000 < 0.25 and set(kept) == {None, 500}
    assert item_error_code(1, "x", faults, 400, content="k", resent=3, recovery=1.0) == 400
    assert item_error_code(1, "x", BatchFaults(), None, content="k", resent=3, recovery=0.0) is None
