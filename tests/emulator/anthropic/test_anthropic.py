"""Anthropic Message Batches through the official SDK: lifecycle, results, faults, validation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from emu_helpers import CLAUDE, claude_request

from batch_provider.emulator.process import EmulatorProcess, running_emulator

HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, MessageBatchIndividualResponse]:
    out = {}
    for r in client.messages.batches.results(batch_id):
        assert isinstance(r, MessageBatchIndividualResponse)
        assert r.custom_id not in out
        out[r.custom_id] = r
    return out


def test_lifecycle_counts_stay_processing_until_ended(
    emu: EmulatorProcess, anth: anthropic.Anthropic
) -> None:
    reqs = [claude_request(f"doc-{i}", f"Summarise document {i}", max_tokens=30) for i in range(6)]
    b = anth.messages.batches.create(requests=reqs)
    assert isinstance(b, MessageBatch)
    assert b.processing_status == "in_progress" and b.results_url is None
    assert b.request_counts.processing == 6
    assert (b.expires_at - b.created_at).total_seconds() == 86400
    with pytest.raises(anthropic.AnthropicError):
        list(anth.messages.batches.results(b.id))  # SDK refuses without results_url
    r = httpx.get(f"{emu.base_url}/v1/messages/batches/{b.id}/results", headers=HEADERS)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"

    emu.advance(600)  # half-way: still all processing (spec B.3)
    mid = anth.messages.batches.retrieve(b.id)
    assert mid.processing_status == "in_progress"
    assert mid.request_counts.processing == 6 and mid.request_counts.succeeded == 0

    emu.advance(700)
    done = anth.messages.batches.retrieve(b.id)
    assert done.processing_status == "ended" and done.ended_at is not None
    assert done.request_counts.processing == 0 and done.request_counts.succeeded == 6
    assert done.results_url == f"{emu.base_url}/v1/messages/batches/{b.id}/results"
    res = results(anth, b.id)
    assert sorted(res) == [f"doc-{i}" for i in range(6)]
    for r in res.values():
        assert r.result.type == "succeeded"
        msg = r.result.message
        assert msg.model == CLAUDE and msg.content[0].type == "text" and msg.content[0].text
        assert 0 < msg.usage.output_tokens <= 30 and msg.usage.service_tier == "batch"


def test_errored_results_and_bad_params(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    no_max = {
        "custom_id": "nomax",
        "params": {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]},
    }
    reqs = [
        claude_request("ok"),
        claude_request("emu-fail-bad"),
        claude_request("emu-fail529-busy"),
        claude_request("emu-fail500-api"),
        claude_request("streamy", stream=True),
        claude_request("zero", max_tokens=0),
        no_max,
    ]
    b = anth.messages.batches.create(requests=reqs)
    emu.advance(5000)
    b = anth.messages.batches.retrieve(b.id)
    assert b.request_counts.succeeded == 1 and b.request_counts.errored == 6
    res = results(anth, b.id)
    kinds = {cid: r.result.error.error.type for cid, r in res.items() if r.result.type == "errored"}
    assert kinds == {
        "emu-fail-bad": "invalid_request_error",
        "emu-fail529-busy": "overloaded_error",
        "emu-fail500-api": "api_error",
        "streamy": "invalid_request_error",
        "zero": "invalid_request_error",
        "nomax": "invalid_request_error",
    }


SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["label", "confidence", "reasons"],
}


def test_structured_outputs(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    tool = {"name": "classify", "description": "c", "input_schema": SCHEMA}
    reqs = [
        claude_request(
            "tool", tools=[tool], tool_choice={"type": "tool", "name": "classify"}, max_tokens=500
        ),
        claude_request("fmt", output_format={"type": "json_schema", "schema": SCHEMA}, max_tokens=500),
        claude_request("prompt", "Reply with JSON for this schema: " + json.dumps(SCHEMA), max_tokens=500),
    ]
    b = anth.messages.batches.create(requests=reqs)
    emu.advance(5000)
    res = results(anth, b.id)
    block = res["tool"].result.message.content[0]
    assert block.type == "tool_use" and block.name == "classify"
    assert res["tool"].result.message.stop_reason == "tool_use"
    for value in (
        block.input,
        json.loads(res["fmt"].result.message.content[0].text),
        json.loads(res["prompt"].result.message.content[0].text),
    ):
        assert value["label"] in ("spam", "ham") and 0 <= value["confidence"] <= 1
        assert all(isinstance(x, str) for x in value["reasons"])


def test_cancel_then_ended_with_canceled(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    b = anth.messages.batches.create(requests=[claude_request(f"c{i}") for i in range(20)])
    emu.advance(620)
    c = anth.messages.batches.cancel(b.id)
    assert c.processing_status == "canceling" and c.cancel_initiated_at is not None
    with pytest.raises(anthropic.BadRequestError):
        anth.messages.batches.delete(b.id)
    emu.advance(61)
    c = anth.messages.batches.retrieve(b.id)
    assert c.processing_status == "ended"
    counts = c.request_counts
    assert counts.canceled > 0 and counts.succeeded > 0 and counts.processing == 0
    assert counts.canceled + counts.succeeded + counts.errored == 20
    res = results(anth, b.id)
    assert sum(r.result.type == "canceled" for r in res.values()) == counts.canceled
    with pytest.raises(anthropic.BadRequestError):
        anth.messages.batches.cancel(b.id)
    deleted = anth.messages.batches.delete(b.id)
    assert deleted.id == b.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        anth.messages.batches.retrieve(b.id)


def test_expire_prefix_gives_expired_results(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    reqs = [claude_request("emu-expire-first")] + [claude_request(f"e{i}") for i in range(9)]
    b = anth.messages.batches.create(requests=reqs)
    emu.advance(80_000)
    assert anth.messages.batches.retrieve(b.id).processing_status == "in_progress"
    emu.advance(10_000)
    b = anth.messages.batches.retrieve(b.id)
    assert b.processing_status == "ended" and b.ended_at == b.expires_at
    assert b.request_counts.expired == 5 and b.request_counts.succeeded == 5
    res = results(anth, b.id)
    assert sorted(cid for cid, r in res.items() if r.result.type == "expired") == [
        f"e{i}" for i in range(4, 9)
    ]


def test_shuffle_and_drop_prefixes(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    reqs = [claude_request("emu-shuffle-drop-0")] + [claude_request(f"r{i:02d}") for i in range(40)]
    b = anth.messages.batches.create(requests=reqs)
    emu.advance(5000)
    url = f"{emu.base_url}/v1/messages/batches/{b.id}/results"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers=HEADERS)
    order = list(results(anth, b.id))
    assert sorted(order) == sorted(r["custom_id"] for r in reqs)
    assert order != [r["custom_id"] for r in reqs]


def test_results_after_archive_are_404(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    b = anth.messages.batches.create(requests=[claude_request("old")])
    emu.advance(30 * 86400)
    b = anth.messages.batches.retrieve(b.id)
    assert b.archived_at is not None
    r = httpx.get(f"{emu.base_url}/v1/messages/batches/{b.id}/results", headers=HEADERS)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_list_pagination(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    ids = [anth.messages.batches.create(requests=[claude_request("p")]).id for _ in range(5)]
    page = anth.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    nxt = anth.messages.batches.list(limit=2, after_id=page.last_id)
    assert [b.id for b in nxt.data] == ids[::-1][2:4]
    back = anth.messages.batches.list(limit=2, before_id=nxt.first_id)
    assert [b.id for b in back.data] == ids[::-1][:2]
    seen = [b.id for b in anth.messages.batches.list(limit=2)]
    assert seen[:5] == ids[::-1] and len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"requests": []}, "at least 1"),
        ({"requests": [claude_request("bad id!")]}, "pattern"),
        ({"requests": [claude_request("x" * 65)]}, "pattern"),
        ({"requests": [claude_request("dup"), claude_request("dup")]}, "Duplicate"),
        ({"requests": [{"custom_id": "np"}]}, "params"),
        ({}, "requests"),
    ],
)
def test_synchronous_validation(emu: EmulatorProcess, body: dict, fragment: str) -> None:
    r = httpx.post(f"{emu.base_url}/v1/messages/batches", json=body, headers=HEADERS)
    assert r.status_code == 400
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert fragment in data["error"]["message"]


def test_auth_and_version_headers(emu: EmulatorProcess) -> None:
    url = f"{emu.base_url}/v1/messages/batches"
    r = httpx.get(url, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(url, headers={"x-api-key": "k"})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
    r = httpx.get(url, headers={"Authorization": "Bearer k", "anthropic-version": "2026-10-21"})
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")


def test_unknown_batch_404(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        anth.messages.batches.retrieve("msgbatch_nope")
    assert exc.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("kind", "status", "etype"),
    [("529", 529, "overloaded_error"), ("500", 500, "api_error"), ("504", 504, "timeout_error")],
)
def test_server_faults(
    emu: EmulatorProcess, anth: anthropic.Anthropic, kind: str, status: int, etype: str
) -> None:
    emu.set_faults({"rules": [{"match": "anthropic", "kind": kind}]})
    with pytest.raises(anthropic.APIStatusError) as exc:
        anth.messages.batches.list()
    assert exc.value.status_code == status and exc.value.body["error"]["type"] == etype
    anth.messages.batches.list()


def test_rate_limit_faults(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    emu.set_faults(
        {
            "rules": [
                {"match": "anthropic", "kind": "429", "retry_after": 2},
                {"match": "anthropic", "kind": "quota"},
            ]
        }
    )
    with pytest.raises(anthropic.RateLimitError) as exc:
        anth.messages.batches.list()
    assert exc.value.response.headers["retry-after"] == "2"
    with pytest.raises(anthropic.RateLimitError) as exc:
        anth.messages.batches.list()
    assert "retry-after" not in exc.value.response.headers


def test_results_stream_dropped_by_server_fault(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    b = anth.messages.batches.create(requests=[claude_request(f"z{i}") for i in range(5)])
    emu.advance(5000)
    emu.set_faults({"rules": [{"match": "GET /v1/messages/batches/*/results", "kind": "drop"}]})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{emu.base_url}/v1/messages/batches/{b.id}/results", headers=HEADERS)
    assert len(results(anth, b.id)) == 5


@pytest.fixture(scope="module")
def small_limits() -> Iterator[EmulatorProcess]:
    args = [
        "--set",
        "anthropic_max_requests=3",
        "--set",
        "anthropic_max_body_bytes=4000",
        "--set",
        "anthropic_results_shuffled=false",
    ]
    with running_emulator(time_factor=1.0, extra_args=args) as proc:
        yield proc


def test_limits(small_limits: EmulatorProcess) -> None:
    url = f"{small_limits.base_url}/v1/messages/batches"
    r = httpx.post(url, json={"requests": [claude_request(f"q{i}") for i in range(4)]}, headers=HEADERS)
    assert r.status_code == 400 and "at most 3" in r.json()["error"]["message"]
    r = httpx.post(url, json={"requests": [claude_request("big", "x" * 5000)]}, headers=HEADERS)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_synthetic_batch_streams_generated_results(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    info = emu.synthetic(requests=300, text_bytes=2000)
    b = anth.messages.batches.retrieve(info["id"])
    assert b.processing_status == "ended" and b.request_counts.succeeded == 300
    res = results(anth, info["id"])
    assert len(res) == 300
    assert len(next(iter(res.values())).result.message.content[0].text) == 2000


def test_garbage_params_never_500(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    reqs = [
        {"custom_id": "g1", "params": {"model": CLAUDE, "max_tokens": 5, "messages": "hi"}},
        {
            "custom_id": "g2",
            "params": {
                "model": CLAUDE,
                "max_tokens": 50,
                "system": 7,
                "messages": [{"role": "user", "content": [{"type": "image"}, 3]}],
                "tools": [{"name": "t", "input_schema": "nope"}],
                "output_format": {"type": "json_schema", "schema": []},
            },
        },
        {"custom_id": "g3", "params": {"model": 5, "max_tokens": "many", "messages": []}},
        {
            "custom_id": "g4",
            "params": {
                "model": CLAUDE,
                "max_tokens": 10**9,
                "messages": [{"role": "user", "content": "big cap"}],
            },
        },
    ]
    b = anth.messages.batches.create(requests=reqs)
    emu.advance(5000)
    b = anth.messages.batches.retrieve(b.id)
    assert b.request_counts.processing == 0
    assert b.request_counts.succeeded + b.request_counts.errored == 4
    res = results(anth, b.id)
    assert res["g1"].result.type == "errored" and res["g3"].result.type == "errored"
    assert res["g4"].result.type == "succeeded"
    r = httpx.post(f"{emu.base_url}/v1/messages/batches", headers=HEADERS, content=b"{nope")
    assert r.status_code == 400 and r.json()["type"] == "error"


def test_results_order_shuffled_by_default_and_configurable(
    emu: EmulatorProcess, anth: anthropic.Anthropic, small_limits: EmulatorProcess
) -> None:
    reqs = [claude_request(f"o{i}") for i in range(3)]
    ids = [r["custom_id"] for r in reqs]
    ordered = anthropic.Anthropic(base_url=small_limits.base_url, api_key="k", max_retries=0)
    b = ordered.messages.batches.create(requests=reqs)
    small_limits.advance(5000)
    assert list(results(ordered, b.id)) == ids
    many = [claude_request(f"m{i:02d}") for i in range(30)]
    b = anth.messages.batches.create(requests=many)
    emu.advance(5000)
    got = list(results(anth, b.id))
    assert sorted(got) == [r["custom_id"] for r in many] and got != [r["custom_id"] for r in many]
