"""Server-wide settings: CLI fault flags, /_emu/faults batch defaults, reset, stats, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from emu_helpers import chat_line, claude_request, create, read_jsonl

from batch_provider.cli import build_parser
from batch_provider.emulator.process import EmulatorProcess, running_emulator


def test_cli_fault_flags_and_reset_restores_them() -> None:
    args = ["--fault-rate", "1.0", "--fault-kinds", "503", "--set", "expired_unrun_count_failed=true"]
    with running_emulator(time_factor=1.0, extra_args=args) as emu:
        client = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as exc:
            client.batches.list()
        assert exc.value.status_code == 503 and exc.value.response.headers["x-request-id"].startswith("req_")
        assert httpx.get(f"{emu.base_url}/_emu/health").status_code == 200  # control routes never faulted
        emu.clear_faults()
        b = create(client, [chat_line(f"x{i}") for i in range(4)], faults="expire")
        emu.advance(90_000)
        b = client.batches.retrieve(b.id)
        assert b.status == "expired"
        assert b.request_counts.completed + b.request_counts.failed == 4  # unrun counted as failed
        emu.reset()
        assert emu.faults()["fault_rate"] == 1.0
        assert emu.stats()["batches_created"]["openai"] == 0
        emu.clear_faults()
        assert client.batches.list().data == []


def test_server_batch_faults_apply_to_both_providers(
    emu: EmulatorProcess, oai: openai.OpenAI, anth: anthropic.Anthropic
) -> None:
    emu.set_faults({"batch_faults": "item_errors=1:503"})
    before = emu.stats()["faults"].get("item_503", 0)
    ob = create(oai, [chat_line("a"), chat_line("b")])
    ab = anth.messages.batches.create(requests=[claude_request("a")])
    emu.clear_faults()
    emu.advance(5000)
    ob = oai.batches.retrieve(ob.id)
    assert ob.request_counts.failed == 2
    assert {x["response"]["status_code"] for x in read_jsonl(oai, ob.error_file_id)} == {503}
    res = list(anth.messages.batches.results(ab.id))
    assert res[0].result.type == "errored" and res[0].result.error.error.type == "api_error"
    assert emu.stats()["faults"]["item_503"] == before + 3


def test_anthropic_error_fraction_token(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    reqs = [claude_request("emu-errors50-0")] + [claude_request(f"k{i}") for i in range(59)]
    b = anth.messages.batches.create(requests=reqs)
    emu.advance(5000)
    b = anth.messages.batches.retrieve(b.id)
    assert 10 < b.request_counts.errored < 50
    assert b.request_counts.errored + b.request_counts.succeeded == 60


def test_cancelled_unrun_error_lines_setting() -> None:
    with running_emulator(time_factor=1.0, extra_args=["--set", "cancelled_unrun_error_lines=true"]) as emu:
        client = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=0)
        b = create(client, [chat_line(f"c{i}") for i in range(10)])
        emu.advance(600)
        client.batches.cancel(b.id)
        emu.advance(100)
        b = client.batches.retrieve(b.id)
        assert b.status == "cancelled"
        errors = read_jsonl(client, b.error_file_id)
        assert errors and {x["error"]["code"] for x in errors} == {"batch_cancelled"}
        assert len(errors) + len(read_jsonl(client, b.output_file_id)) == 10


def test_stats_and_advance_endpoints(emu: EmulatorProcess) -> None:
    now = emu.now()
    assert emu.advance(100) >= now + 100
    r = httpx.post(f"{emu.base_url}/_emu/advance", params={"seconds": "-5"})
    assert r.status_code == 400
    stats = emu.stats()
    assert {"batches_created", "requests", "faults", "files_uploaded"} <= set(stats)


def test_unknown_route_uses_provider_envelope(emu: EmulatorProcess) -> None:
    r = httpx.get(f"{emu.base_url}/v1/nothing", headers={"Authorization": "Bearer k"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_cli_parser_accepts_emulator_options() -> None:
    args = build_parser().parse_args(
        [
            "emulator",
            "--port",
            "0",
            "--time-factor",
            "3600",
            "--fault-rate",
            "0.3",
            "--seed",
            "5",
            "--set",
            "openai_max_requests=10",
        ]
    )
    assert args.command == "emulator" and args.time_factor == 3600 and args.fault_rate == 0.3
    assert args.set == ["openai_max_requests=10"]


def test_openai_synthetic_output_file(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    r = httpx.post(
        f"{emu.base_url}/_emu/synthetic", json={"provider": "openai", "requests": 250, "text_bytes": 500}
    )
    info = r.json()
    b = oai.batches.retrieve(info["id"])
    assert b.status == "completed" and b.request_counts.completed == 250
    meta = oai.files.retrieve(b.output_file_id)
    assert meta.bytes == info["bytes"]
    content = oai.files.content(b.output_file_id).content
    assert len(content) == meta.bytes
    lines = [json.loads(x) for x in content.splitlines()]
    assert len(lines) == 250 and len({x["custom_id"] for x in lines}) == 250
    assert len(lines[0]["response"]["body"]["choices"][0]["message"]["content"]) == 500


def test_random_fault_rate_is_deterministic_per_seed(emu: EmulatorProcess) -> None:
    def pattern() -> list[int]:
        emu.set_faults(
            {"fault_rate": 0.5, "fault_kinds": ["500", "503"], "fault_routes": ["GET /v1/batches"]}
        )
        with httpx.Client(base_url=emu.base_url, headers={"Authorization": "Bearer k"}) as client:
            codes = [client.get("/v1/batches").status_code for _ in range(30)]
            assert client.get("/v1/files").status_code == 200  # not in fault_routes
        return codes

    first, second = pattern(), pattern()
    assert first == second
    assert {200, 500, 503} <= set(first)


def test_uploaded_files_expire(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    short = oai.files.create(
        file=("s.jsonl", b"{}"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    default = oai.files.create(file=("d.jsonl", b"{}"), purpose="batch")
    assert short.expires_at == short.created_at + 3600
    assert default.expires_at == default.created_at + 30 * 86400
    emu.advance(3601)
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(short.id)
    assert oai.files.retrieve(default.id).id == default.id
    emu.advance(30 * 86400)
    with pytest.raises(openai.NotFoundError):
        oai.files.content(default.id)


def test_anthropic_batches_survive_restart(tmp_path) -> None:
    with running_emulator(time_factor=1.0, data_dir=tmp_path / "state") as emu:
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0)
        done = client.messages.batches.create(requests=[claude_request("a"), claude_request("emu-fail-b")])
        emu.advance(2000)
        running = client.messages.batches.create(requests=[claude_request("c")])
        before = [r.model_dump() for r in client.messages.batches.results(done.id)]
        emu.restart()
        client = anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0)
        assert [r.model_dump() for r in client.messages.batches.results(done.id)] == before
        assert [b.id for b in client.messages.batches.list()] == [running.id, done.id]
        assert client.messages.batches.retrieve(running.id).processing_status == "in_progress"
        emu.advance(2000)
        assert client.messages.batches.retrieve(running.id).processing_status == "ended"
        assert emu.stats()["batches_created"]["anthropic"] == 0  # counters are per process


def test_cli_entry_serves(tmp_path) -> None:
    port_file = tmp_path / "port"
    code = "import sys; from batch_provider.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "emulator", "--port", "0", "--port-file", str(port_file)],
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/_emu/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert httpx.get(f"{url}/_emu/config").json()["time_factor"] == 1.0
    finally:
        proc.terminate()
        proc.wait(10)
