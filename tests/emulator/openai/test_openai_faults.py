"""OpenAI fault injection and validation: per-request, per-batch, server-wide (spec E, A.8)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from emu_helpers import ENDPOINT, chat_line, create, read_jsonl, upload

from batch_provider.emulator.process import EmulatorProcess, running_emulator


def _ids(lines: list[dict]) -> list[str]:
    return [x["custom_id"] for x in lines]


def test_item_errors_by_custom_id_prefix(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    lines = [
        chat_line("ok-1"),
        chat_line("emu-fail-bad"),
        chat_line("emu-fail500-srv"),
        chat_line("emu-fail429-rl"),
    ]
    b = create(oai, lines)
    emu.advance(5000)
    b = oai.batches.retrieve(b.id)
    assert b.status == "completed"
    assert (b.request_counts.completed, b.request_counts.failed) == (1, 3)
    errors = {x["custom_id"]: x for x in read_jsonl(oai, b.error_file_id)}
    assert errors["emu-fail-bad"]["response"]["status_code"] == 400
    assert errors["emu-fail-bad"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["emu-fail500-srv"]["response"]["status_code"] == 500
    assert errors["emu-fail500-srv"]["response"]["body"]["error"]["type"] == "server_error"
    assert errors["emu-fail429-rl"]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert all(x["error"] is None for x in errors.values())
    assert _ids(read_jsonl(oai, b.output_file_id)) == ["ok-1"]


def test_item_errors_fraction_is_deterministic(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    # the second batch resends the first's requests: without recovery they meet the same errors
    emu.set_faults({"item_recovery": 0})
    lines = [chat_line(f"f{i}") for i in range(60)]
    first = create(oai, lines, faults="item_errors=0.5:500")
    second = create(oai, lines, faults="item_errors=0.5:500")
    emu.advance(5000)
    a, b = oai.batches.retrieve(first.id), oai.batches.retrieve(second.id)
    assert a.status == b.status == "completed"
    assert 10 < a.request_counts.failed < 50
    err_a, err_b = read_jsonl(oai, a.error_file_id), read_jsonl(oai, b.error_file_id)
    assert len(err_a) == a.request_counts.failed
    assert sorted(_ids(err_a)) == sorted(_ids(err_b))
    assert {x["response"]["status_code"] for x in err_a} == {500}
    assert len(read_jsonl(oai, a.output_file_id)) + len(err_a) == 60


def test_all_failed_completes_without_output_file(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = create(oai, [chat_line("emu-fail-1"), chat_line("emu-fail-2")])
    emu.advance(5000)
    b = oai.batches.retrieve(b.id)
    assert b.status == "completed" and b.output_file_id is None and b.error_file_id is not None


def test_expiry_with_partial_results(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    lines = [chat_line(f"x{i}") for i in range(10)] + [chat_line("emu-fail-x")]
    b = create(oai, lines, faults="expire")
    emu.advance(50_000)
    mid = oai.batches.retrieve(b.id)
    assert mid.status == "in_progress" and mid.request_counts.completed < 11
    emu.advance(40_000)
    b = oai.batches.retrieve(b.id)
    assert b.status == "expired" and b.expired_at == b.expires_at
    done = b.request_counts.completed + b.request_counts.failed
    assert done == 5  # expire: half of the 11 requests were run
    out, err = read_jsonl(oai, b.output_file_id), read_jsonl(oai, b.error_file_id)
    assert len(out) == b.request_counts.completed
    expired = [x for x in err if x["response"] is None]
    assert all(x["error"]["code"] == "batch_expired" for x in expired)
    assert len(expired) == 11 - done
    assert sorted(_ids(out) + _ids(err)) == sorted(_ids(lines))  # every id exactly once


def test_shuffled_output_order(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    lines = [chat_line(f"s{i:02d}") for i in range(30)]
    b = create(oai, lines, faults="shuffle")
    emu.advance(5000)
    out = _ids(read_jsonl(oai, oai.batches.retrieve(b.id).output_file_id))
    assert sorted(out) == _ids(lines)
    assert out != _ids(lines)


def test_output_download_dropped_once(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = create(oai, [chat_line(f"d{i}") for i in range(30)], faults="drop")
    emu.advance(5000)
    fid = oai.batches.retrieve(b.id).output_file_id
    url = f"{emu.base_url}/v1/files/{fid}/content"
    headers = {"Authorization": "Bearer k"}
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers=headers)
    full = httpx.get(url, headers=headers)
    assert full.status_code == 200
    assert len(full.content) == oai.files.retrieve(fid).bytes
    assert len(full.text.splitlines()) == 30
    assert emu.stats()["faults"]["stream_drop"] >= 1


def test_forced_validation_failure(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = create(oai, [chat_line("t")], faults="fail_validation=token_limit_exceeded")
    emu.advance(31)
    b = oai.batches.retrieve(b.id)
    assert b.status == "failed" and b.failed_at is not None
    assert b.errors is not None and b.errors.data[0].code == "token_limit_exceeded"
    assert b.errors.data[0].line is None


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        ([chat_line("a"), chat_line("a")], "duplicate_custom_id", 2),
        ([chat_line("a"), "{not json"], "invalid_json_line", 2),
        ([chat_line("a"), {**chat_line("b"), "url": "/v1/embeddings"}], "url_mismatch", 2),
        (
            [chat_line("a"), {**chat_line("b"), "body": {**chat_line("b")["body"], "model": "gpt-6-sol"}}],
            "model_mismatch",
            2,
        ),
        ([{**chat_line("a"), "body": {**chat_line("a")["body"], "stream": True}}], "stream_not_supported", 1),
        ([{**chat_line("a"), "method": "GET"}], "invalid_method", 1),
        ([{"method": "POST", "url": ENDPOINT, "body": {}}], "invalid_custom_id", 1),
        ([""], "empty_file", None),
    ],
)
def test_validation_failures(
    emu: EmulatorProcess, oai: openai.OpenAI, lines: list, code: str, line: int | None
) -> None:
    b = create(oai, lines)
    assert b.status == "validating"
    emu.advance(31)
    b = oai.batches.retrieve(b.id)
    assert b.status == "failed"
    assert b.errors is not None
    assert (b.errors.data[0].code, b.errors.data[0].line) == (code, line)
    assert b.request_counts.total == 0 and b.output_file_id is None and b.error_file_id is None


def test_missing_input_file_fails(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = oai.batches.create(input_file_id="file-missing", endpoint=ENDPOINT, completion_window="24h")
    emu.advance(31)
    b = oai.batches.retrieve(b.id)
    assert b.status == "failed" and b.errors.data[0].code == "file_not_found"


def test_body_refused_by_endpoint_is_error_line(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    bad = {"custom_id": "nomsg", "method": "POST", "url": ENDPOINT, "body": {"model": "gpt-6-luna"}}
    b = create(oai, [chat_line("ok"), bad, chat_line("zero", max_completion_tokens=0)])
    emu.advance(5000)
    b = oai.batches.retrieve(b.id)
    assert b.status == "completed" and b.request_counts.failed == 2
    params = {
        x["custom_id"]: x["response"]["body"]["error"]["param"] for x in read_jsonl(oai, b.error_file_id)
    }
    assert params == {"nomsg": "messages", "zero": "max_completion_tokens"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"endpoint": ENDPOINT, "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": "f", "endpoint": ENDPOINT, "completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "f", "endpoint": "/v1/nope", "completion_window": "24h"}, "endpoint"),
        (
            {
                "input_file_id": "f",
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "metadata": {f"k{i}": "v" for i in range(17)},
            },
            "metadata",
        ),
        (
            {
                "input_file_id": "f",
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "metadata": {"emu_faults": "explode"},
            },
            "metadata",
        ),
    ],
)
def test_create_rejects_bad_body(emu: EmulatorProcess, body: dict, param: str) -> None:
    r = httpx.post(f"{emu.base_url}/v1/batches", json=body, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_malformed_json_body_is_400(emu: EmulatorProcess) -> None:
    r = httpx.post(f"{emu.base_url}/v1/batches", content=b"{oops", headers={"Authorization": "Bearer k"})
    assert r.status_code == 400 and "error" in r.json()


# ----------------------------------------------------------------------------- server-wide HTTP faults


def test_429_n_times_then_success(emu: EmulatorProcess) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/batches", "kind": "429", "times": 2, "retry_after": 0}]})
    client = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.batches.list()
    assert exc.value.response.headers["retry-after"] == "0"
    assert "retry-after-ms" in exc.value.response.headers
    assert exc.value.code == "rate_limit_exceeded"
    assert emu.faults()["rules"][0]["times"] == 1
    retrying = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=2)
    retrying.batches.list()  # one more 429, then success
    client.batches.list()
    assert emu.stats()["faults"]["http_429"] >= 2


def test_429_long_and_quota_variants(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    emu.set_faults({"rules": [{"match": "openai", "kind": "429_long"}, {"match": "openai", "kind": "quota"}]})
    with pytest.raises(openai.RateLimitError) as exc:
        oai.batches.list()
    assert int(exc.value.response.headers["retry-after"]) > 120
    with pytest.raises(openai.RateLimitError) as exc:
        oai.batches.list()
    assert exc.value.code == "insufficient_quota" and "retry-after" not in exc.value.response.headers
    oai.batches.list()


@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("503", 503), ("529", 503), ("502", 502)])
def test_server_errors(emu: EmulatorProcess, oai: openai.OpenAI, kind: str, status: int) -> None:
    emu.set_faults({"rules": [{"match": "/v1/batches*", "kind": kind}]})
    with pytest.raises(openai.APIStatusError) as exc:
        oai.batches.list()
    assert exc.value.status_code == status
    assert isinstance(exc.value.body, dict) and exc.value.body["type"] == "server_error"
    assert ("retry-after" in exc.value.response.headers) == (status == 503)


@pytest.mark.parametrize("kind", ["drop", "reset"])
def test_dropped_connection(emu: EmulatorProcess, oai: openai.OpenAI, kind: str) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/batches", "kind": kind}]})
    with pytest.raises(openai.APIConnectionError):
        oai.batches.list()
    oai.batches.list()


def test_drop_after_create_still_creates(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    fid = upload(oai, [chat_line("dup")])
    emu.set_faults({"rules": [{"match": "POST /v1/batches", "kind": "drop"}]})
    before = emu.stats()["batches_created"]["openai"]
    with pytest.raises(openai.APIConnectionError):
        oai.batches.create(
            input_file_id=fid, endpoint=ENDPOINT, completion_window="24h", metadata={"tag": "drop-test"}
        )
    assert emu.stats()["batches_created"]["openai"] == before + 1
    assert any((b.metadata or {}).get("tag") == "drop-test" for b in oai.batches.list(limit=5).data)


def test_bad_fault_settings_rejected(emu: EmulatorProcess) -> None:
    r = httpx.post(f"{emu.base_url}/_emu/faults", json={"fault_kinds": ["teapot"]})
    assert r.status_code == 400


def test_fault_storm_lifecycle_completes_with_retries(emu: EmulatorProcess) -> None:
    # 429/503/529 carry retry-after-ms, so the SDK's retries stay short.
    emu.set_faults({"fault_rate": 0.3, "retry_after": 0.05, "fault_kinds": ["429", "503", "529"]})
    client = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="k", max_retries=10)
    before = emu.stats()["faults_total"]
    b = create(client, [chat_line(f"storm{i}") for i in range(5)])
    for _ in range(10):
        client.batches.retrieve(b.id)
    emu.clear_faults()
    emu.advance(5000)
    b = client.batches.retrieve(b.id)
    assert b.status == "completed" and b.request_counts.completed == 5
    assert emu.stats()["faults_total"] > before


# ----------------------------------------------------------------------------- limits and restart


@pytest.fixture(scope="module")
def limited() -> Iterator[EmulatorProcess]:
    args = ["--set", "openai_max_requests=3", "--set", "openai_max_file_bytes=2000"]
    with running_emulator(time_factor=1.0, extra_args=args) as proc:
        yield proc


def test_limits_are_configurable(limited: EmulatorProcess) -> None:
    client = openai.OpenAI(base_url=f"{limited.base_url}/v1", api_key="k", max_retries=0)
    too_many = create(client, [chat_line(f"l{i}") for i in range(4)])
    too_big = create(client, [chat_line(f"b{i}", "x" * 900) for i in range(3)])
    limited.advance(31)
    a = client.batches.retrieve(too_many.id)
    assert a.status == "failed" and a.errors.data[0].code == "too_many_tasks"
    b = client.batches.retrieve(too_big.id)
    assert b.status == "failed" and b.errors.data[0].code == "file_too_large"


def test_restart_keeps_batches_files_and_clock(tmp_path) -> None:
    with running_emulator(time_factor=1.0, data_dir=tmp_path / "state") as proc:
        client = openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="k", max_retries=0)
        b = create(client, [chat_line("p1"), chat_line("p2")])
        proc.advance(5000)
        done = client.batches.retrieve(b.id)
        content = client.files.content(done.output_file_id).content
        now = proc.now()
        pending = create(client, [chat_line("p3")])
        port = proc.port
        proc.restart()
        assert proc.port == port
        client = openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="k", max_retries=0)
        again = client.batches.retrieve(b.id)
        assert again.status == "completed" and again.output_file_id == done.output_file_id
        assert client.files.content(done.output_file_id).content == content
        assert proc.now() >= now
        assert client.batches.retrieve(pending.id).status in ("validating", "in_progress")
        proc.advance(5000)
        assert client.batches.retrieve(pending.id).status == "completed"


def test_garbage_inputs_never_500(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    weird = [
        {
            "custom_id": "w1",
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": "gpt-6-luna", "messages": "hi"},
        },
        {
            "custom_id": "w2",
            "method": "POST",
            "url": ENDPOINT,
            "body": {
                "model": "gpt-6-luna",
                "messages": [{"role": "user", "content": [1, None, {"x": 2}]}],
                "response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}},
                "tools": [{"type": "function", "function": "nope"}],
                "tool_choice": {"type": "function"},
            },
        },
        {
            "custom_id": "w3",
            "method": "POST",
            "url": ENDPOINT,
            "body": {
                "model": "gpt-6-luna",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": True,
            },
        },
    ]
    b = create(oai, weird)
    garbage = oai.files.create(file=("g.jsonl", bytes(range(256)) * 10), purpose="batch")
    g = oai.batches.create(input_file_id=garbage.id, endpoint=ENDPOINT, completion_window="24h")
    emu.advance(5000)
    b = oai.batches.retrieve(b.id)
    assert b.status == "completed"
    assert b.request_counts.completed + b.request_counts.failed == 3
    read_jsonl(oai, b.output_file_id)
    read_jsonl(oai, b.error_file_id)
    g = oai.batches.retrieve(g.id)
    assert g.status == "failed" and g.errors.data[0].code == "invalid_json_line"
    headers = {"Authorization": "Bearer k"}
    for path in ("/v1/files?limit=abc", "/v1/batches?limit=0", "/v1/files?order=sideways"):
        assert httpx.get(f"{emu.base_url}{path}", headers=headers).status_code == 400
    assert httpx.post(f"{emu.base_url}/v1/files", headers=headers, content=b"x").status_code == 400
    assert httpx.post(f"{emu.base_url}/v1/batches", headers=headers, json=[1, 2]).status_code == 400
