"""OpenAI work done after the answer: validation (plan) after create, output files at finalize."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from emu_helpers import chat_line, create, read_jsonl
from starlette.testclient import TestClient

from batch_provider.emulator.app import create_app
from batch_provider.emulator.config import EmulatorConfig
from batch_provider.emulator.openai.batch import OpenAIBatch
from batch_provider.emulator.openai.plan import Plan
from batch_provider.emulator.openai.state import OpenAIBatches
from batch_provider.emulator.process import EmulatorProcess, running_emulator

KEY = "sk-emulator-test"

# ----------------------------------------------------------------------------- plan after create


@pytest.fixture
def app_client(tmp_path) -> Iterator[TestClient]:
    """The emulator app in this process (so its plan builder can be patched), one event loop."""
    app = create_app(EmulatorConfig(data_dir=str(tmp_path / "state"), time_factor=1.0, seed=7))
    with TestClient(app, raise_server_exceptions=False) as tc:
        yield tc


def _sdk(tc: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=tc, max_retries=0)


def test_create_answers_before_validating_and_stats_wait_for_the_plan(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, building = threading.Event(), threading.Event()
    real = OpenAIBatches._build_plan

    def gated(self: OpenAIBatches, rec: OpenAIBatch) -> Plan:
        building.set()
        assert gate.wait(10)
        return real(self, rec)

    monkeypatch.setattr(OpenAIBatches, "_build_plan", gated)
    client = _sdk(app_client)
    batch = create(client, [chat_line(f"r{i}") for i in range(3)], faults="item_errors=1:503,shuffle")
    assert batch.status == "validating" and batch.request_counts.total == 0
    time.sleep(0.2)
    assert not building.is_set(), "create validated the file before answering or right after"

    stats: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: stats.update(app_client.get("/_emu/stats").json()))
    reader.start()
    assert building.wait(5)  # the stats read started the plan, which is blocked
    reader.join(0.3)
    assert reader.is_alive(), "GET /_emu/stats answered before the plan it counts was built"
    gate.set()
    reader.join(10)
    assert stats["batches_created"]["openai"] == 1
    assert stats["faults"] == {"item_503": 3, "batch_shuffle": 1}

    b = client.batches.retrieve(batch.id)
    assert b.status == "validating" and b.metadata == batch.metadata
    assert app_client.get("/_emu/stats").json()["faults"] == stats["faults"]  # counted once


def test_a_failing_plan_is_reported_by_reads_and_retried(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = OpenAIBatches._build_plan

    def broken(self: OpenAIBatches, rec: OpenAIBatch) -> Plan:
        raise OSError("disk on fire")

    monkeypatch.setattr(OpenAIBatches, "_build_plan", broken)
    client = _sdk(app_client)
    with caplog.at_level(logging.WARNING):
        batch = create(client, [chat_line("a"), chat_line("b")], faults="shuffle")
        assert batch.status == "validating"
        stats = app_client.get("/_emu/stats").json()
        assert stats["batches_created"]["openai"] == 1 and stats["faults"] == {}
        read = app_client.get(f"/v1/batches/{batch.id}", headers={"Authorization": f"Bearer {KEY}"})
        assert read.status_code == 500
        gc.collect()
    assert "never retrieved" not in caplog.text

    monkeypatch.setattr(OpenAIBatches, "_build_plan", real)
    assert client.batches.retrieve(batch.id).status == "validating"
    assert app_client.get("/_emu/stats").json()["faults"] == {"batch_shuffle": 1}


def test_stats_right_after_create(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    before = emu.stats()
    lines = [chat_line(f"s{i}", "Classify: " + "words " * 50) for i in range(3000)]
    create(oai, lines, faults="item_errors=1:529")
    after = emu.stats()
    assert after["batches_created"]["openai"] == before["batches_created"]["openai"] + 1
    assert after["faults"]["item_529"] == before["faults"].get("item_529", 0) + 3000


# ----------------------------------------------------------------------------- outputs at finalize


@pytest.fixture(scope="module")
def finalize_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    data = tmp_path_factory.mktemp("finalize-state")
    args = ["--outputs-at-finalize"]
    with running_emulator(time_factor=1.0, seed=7, data_dir=data, extra_args=args) as proc:
        yield proc
        log = proc.log_tail(20_000)
        assert "Traceback" not in log and "failed" not in log, log


@pytest.fixture
def fin(finalize_emu: EmulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{finalize_emu.base_url}/v1", api_key=KEY, max_retries=0)


def _until(client: openai.OpenAI, batch_id: str, status: str) -> Any:
    deadline = time.monotonic() + 20
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status == status or time.monotonic() > deadline:
            return b
        time.sleep(0.02)


def test_outputs_written_while_finalizing(finalize_emu: EmulatorProcess, fin: openai.OpenAI) -> None:
    lines = [chat_line(f"emu-fail500-{i}" if i % 10 == 0 else f"q{i}") for i in range(400)]
    batch = create(fin, lines)
    finalize_emu.advance(31 + 1200 + 400 * 0.5 + 10_000)  # processing and finalizing both over
    b = fin.batches.retrieve(batch.id)  # the first read after processing starts the writing
    assert b.status == "finalizing" and b.finalizing_at is not None
    assert b.completed_at is None and b.output_file_id is None and b.error_file_id is None
    assert (b.request_counts.completed, b.request_counts.failed) == (360, 40)

    b = _until(fin, batch.id, "completed")
    assert b.status == "completed"
    assert b.completed_at is not None and b.completed_at >= b.finalizing_at + 60
    out, err = read_jsonl(fin, b.output_file_id), read_jsonl(fin, b.error_file_id)
    assert len(out) == 360 and all(x["response"]["status_code"] == 200 for x in out)
    assert len(err) == 40 and {x["response"]["status_code"] for x in err} == {500}
    assert fin.files.retrieve(b.output_file_id).bytes > 0
    assert sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out) == b.usage.output_tokens


def test_files_ready_before_the_finalizing_time_ends(
    finalize_emu: EmulatorProcess, fin: openai.OpenAI
) -> None:
    batch = create(fin, [chat_line(f"w{i}") for i in range(20)])
    finalize_emu.advance(31 + 1200 + 20 * 0.5 + 5)  # processing over, 55 s of finalizing left
    b = fin.batches.retrieve(batch.id)
    assert b.status == "finalizing" and b.output_file_id is None
    time.sleep(0.3)  # the files are written meanwhile; the batch still finalizes until its time is up
    assert fin.batches.retrieve(batch.id).status == "finalizing"
    finalize_emu.advance(60)
    b = fin.batches.retrieve(batch.id)
    assert b.status == "completed" and b.completed_at == b.finalizing_at + 60
    assert len(read_jsonl(fin, b.output_file_id)) == 20


def test_expired_and_cancelled_batches_report_their_files_at_once(
    finalize_emu: EmulatorProcess, fin: openai.OpenAI
) -> None:
    expiring = create(fin, [chat_line(f"x{i}") for i in range(10)], faults="expire")
    cancelled = create(fin, [chat_line(f"c{i}") for i in range(10)])
    finalize_emu.advance(600)
    fin.batches.cancel(cancelled.id)
    finalize_emu.advance(90_000)
    e = fin.batches.retrieve(expiring.id)
    assert e.status == "expired" and e.error_file_id is not None
    errors = read_jsonl(fin, e.error_file_id)
    assert len(errors) + len(read_jsonl(fin, e.output_file_id)) == 10
    assert {x["error"]["code"] for x in errors if x["error"]} == {"batch_expired"}
    c = fin.batches.retrieve(cancelled.id)
    assert c.status == "cancelled" and c.output_file_id is not None
    assert len(read_jsonl(fin, c.output_file_id)) == c.request_counts.completed


def test_finalized_batches_survive_restart(finalize_emu: EmulatorProcess, fin: openai.OpenAI) -> None:
    batch = create(fin, [chat_line(f"k{i}") for i in range(5)])
    finalize_emu.advance(5000)
    fin.batches.retrieve(batch.id)
    done = _until(fin, batch.id, "completed")
    content = fin.files.content(done.output_file_id).content
    finalize_emu.restart()
    again = openai.OpenAI(base_url=f"{finalize_emu.base_url}/v1", api_key=KEY, max_retries=0)
    b = again.batches.retrieve(batch.id)
    assert b.status == "completed"
    assert (b.completed_at, b.output_file_id) == (done.completed_at, done.output_file_id)
    assert again.files.content(b.output_file_id).content == content
