"""The queue-delay knob: a batch waits before processing starts, fixed, random within a range or
per batch, set from the command line or the control API; a delay is pinned on first read."""

from __future__ import annotations

import anthropic
import openai
from emu_helpers import chat_line, claude_request, create

from batch_provider.emulator.process import EmulatorProcess, running_emulator


def test_fixed_delay_from_the_cli_keeps_openai_validating_then_reports_the_start() -> None:
    with running_emulator(time_factor=1.0, extra_args=["--queue-delay", "3600"]) as emu:
        client = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=0)
        batch = create(client, [chat_line("a"), chat_line("b")])
        emu.advance(3000)
        assert client.batches.retrieve(batch.id).status == "validating"
        emu.advance(700)
        seen = client.batches.retrieve(batch.id)
        assert seen.status == "in_progress" and seen.request_counts.completed == 0
        assert seen.in_progress_at - seen.created_at >= 3600


def test_range_gives_each_batch_its_own_delay_within_it() -> None:
    with running_emulator(time_factor=1.0, extra_args=["--queue-delay", "1000:5000"]) as emu:
        client = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=0)
        ids = [create(client, [chat_line(f"r{i}")]).id for i in range(6)]
        client.batches.retrieve(ids[0])
        emu.advance(6000)
        pinned = emu.set_queue_delay()["per_batch"]
        seen = [client.batches.retrieve(b) for b in ids]
        delays = [b.in_progress_at - b.created_at for b in seen]
        assert all(1000 <= pinned[b] <= 5000 for b in ids), pinned
        assert len({round(pinned[b]) for b in ids}) > 1  # not one value for all
        assert all(d >= pinned[b] for d, b in zip(delays, ids, strict=True))


def test_next_and_per_batch_make_one_anthropic_batch_late(emu: EmulatorProcess) -> None:
    anth = anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0)
    emu.set_queue_delay(next=[100_000])
    late = anth.messages.batches.create(requests=[claude_request("late")])
    on_time = anth.messages.batches.create(requests=[claude_request("on_time")])
    emu.advance(5000)
    assert anth.messages.batches.retrieve(on_time.id).processing_status == "ended"
    late_seen = anth.messages.batches.retrieve(late.id)
    assert late_seen.processing_status == "in_progress" and late_seen.request_counts.succeeded == 0
    emu.set_queue_delay(per_batch={late.id: 0})  # the control API can release it too
    emu.advance(5000)
    assert anth.messages.batches.retrieve(late.id).processing_status == "ended"


def test_a_delay_taken_from_next_survives_a_restart(tmp_path) -> None:
    with running_emulator(time_factor=1.0, data_dir=tmp_path) as emu:
        anth = anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0)
        emu.set_queue_delay(next=[100_000])
        held = anth.messages.batches.create(requests=[claude_request("held")])
        assert anth.messages.batches.retrieve(held.id).processing_status == "in_progress"
        emu.restart()
        emu.advance(5000)
        assert emu.set_queue_delay()["per_batch"] == {held.id: 100_000}
        seen = anth.messages.batches.retrieve(held.id)
        assert seen.processing_status == "in_progress" and seen.request_counts.succeeded == 0
