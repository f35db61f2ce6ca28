"""OpenAI Files + Batches through the official SDK: lifecycle, outputs, listing, cancel, expiry."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from emu_helpers import MODEL, chat_line, create, jsonl, read_jsonl, upload
from openai.types import Batch, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from batch_provider.emulator.process import EmulatorProcess, running_emulator


def test_full_lifecycle_counts_rise_and_outputs_parse(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    lines = [chat_line(f"req-{i:03d}", f"Classify item {i}", max_completion_tokens=40) for i in range(10)]
    batch = create(oai, lines)
    assert isinstance(batch, Batch)
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.metadata == {"suite": "emulator"}
    assert batch.expires_at == batch.created_at + 86400

    emu.advance(31)  # validating (30 s) is over
    b = oai.batches.retrieve(batch.id)
    assert b.status == "in_progress"
    assert b.in_progress_at is not None and b.request_counts.total == 10
    first = b.request_counts.completed

    emu.advance(600)  # about half of the 1205 s of processing
    b = oai.batches.retrieve(batch.id)
    assert b.status == "in_progress"
    assert first < b.request_counts.completed < 10
    assert b.model == MODEL

    emu.advance(640)  # processing ends at 30 + 1205 s, finalizing lasts 60 s
    b = oai.batches.retrieve(batch.id)
    assert b.status == "finalizing" and b.finalizing_at is not None
    assert b.request_counts.completed == 10 and b.output_file_id is None

    emu.advance(61)
    b = oai.batches.retrieve(batch.id)
    assert b.status == "completed"
    assert b.completed_at is not None and b.completed_at >= b.finalizing_at >= b.in_progress_at
    assert b.error_file_id is None and b.output_file_id is not None
    assert b.usage is not None and b.usage.total_tokens == b.usage.input_tokens + b.usage.output_tokens > 0

    meta = oai.files.retrieve(b.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0
    out = read_jsonl(oai, b.output_file_id)
    assert sorted(line["custom_id"] for line in out) == [f"req-{i:03d}" for i in range(10)]
    total_out = 0
    for line in out:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens <= 40
        total_out += completion.usage.completion_tokens
    assert total_out == b.usage.output_tokens


def test_outputs_are_deterministic_per_body(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    lines = [chat_line("a", "same prompt"), chat_line("b", "same prompt"), chat_line("c", "other prompt")]
    b = create(oai, lines)
    emu.advance(5000)
    out = {
        x["custom_id"]: x["response"]["body"]["choices"][0]["message"]["content"]
        for x in read_jsonl(oai, oai.batches.retrieve(b.id).output_file_id)
    }
    assert out["a"] == out["b"]
    assert out["a"] != out["c"]


SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "count": {"type": "integer", "minimum": 3, "maximum": 5},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["label", "score", "count", "flag", "tags", "note"],
    "additionalProperties": False,
}


def _check_schema(value: dict) -> None:
    assert set(value) == set(SCHEMA["properties"])
    assert value["label"] in ("positive", "negative", "neutral")
    assert 0 <= value["score"] <= 1
    assert isinstance(value["count"], int) and 3 <= value["count"] <= 5
    assert isinstance(value["flag"], bool)
    assert len(value["tags"]) == 2 and all(isinstance(t, str) for t in value["tags"])
    assert isinstance(value["note"], str)


def test_structured_outputs_validate(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA, "strict": True}}
    prompt_schema = "Answer as JSON matching this schema: " + json.dumps(SCHEMA)
    tool = {"type": "function", "function": {"name": "classify", "parameters": SCHEMA}}
    lines = [
        chat_line("rf", "Classify: great", response_format=rf),
        chat_line("prompt", prompt_schema),
        chat_line("tool", "Classify: bad", tools=[tool], tool_choice="required"),
    ]
    b = create(oai, lines)
    emu.advance(5000)
    out = {
        x["custom_id"]: ChatCompletion.model_validate(x["response"]["body"])
        for x in read_jsonl(oai, oai.batches.retrieve(b.id).output_file_id)
    }
    _check_schema(json.loads(out["rf"].choices[0].message.content or ""))
    _check_schema(json.loads(out["prompt"].choices[0].message.content or ""))
    call = out["tool"].choices[0].message.tool_calls[0]
    assert out["tool"].choices[0].finish_reason == "tool_calls" and call.function.name == "classify"
    _check_schema(json.loads(call.function.arguments))


def test_responses_endpoint_with_text_format(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": MODEL,
            "input": "Classify: fine",
            "max_output_tokens": 300,
            "text": {"format": {"type": "json_schema", "name": "c", "schema": SCHEMA, "strict": True}},
        },
    }
    plain = {**line, "custom_id": "r2", "body": {"model": MODEL, "input": "Say hi", "max_output_tokens": 16}}
    b = create(oai, [line, plain], endpoint="/v1/responses")
    emu.advance(5000)
    out = {
        x["custom_id"]: Response.model_validate(x["response"]["body"])
        for x in read_jsonl(oai, oai.batches.retrieve(b.id).output_file_id)
    }
    _check_schema(json.loads(out["r1"].output_text))
    assert out["r2"].usage is not None and out["r2"].usage.output_tokens <= 16
    assert out["r2"].output_text


def test_embeddings_dimensions(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    def line(cid: str, **body: object) -> dict:
        return {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", **body},
        }

    b = create(
        oai,
        [line("e1", input="hello"), line("e2", input=["a", "b"], dimensions=64)],
        endpoint="/v1/embeddings",
    )
    emu.advance(5000)
    out = {
        x["custom_id"]: CreateEmbeddingResponse.model_validate(x["response"]["body"])
        for x in read_jsonl(oai, oai.batches.retrieve(b.id).output_file_id)
    }
    assert len(out["e1"].data) == 1 and len(out["e1"].data[0].embedding) == 1536
    assert [len(d.embedding) for d in out["e2"].data] == [64, 64]
    norm = sum(v * v for v in out["e2"].data[0].embedding)
    assert abs(norm - 1.0) < 1e-3
    assert out["e1"].usage.prompt_tokens > 0


def test_list_batches_pagination_newest_first(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    ids = [create(oai, [chat_line("x")]).id for _ in range(5)]
    page = oai.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more is True
    seen = [b.id for b in oai.batches.list(limit=2)]  # auto-pagination follows after=
    assert seen[:5] == ids[::-1]
    assert len(seen) == len(set(seen))
    last = oai.batches.list(limit=100, after=ids[0])
    assert ids[0] not in [b.id for b in last.data]


def test_files_list_retrieve_delete(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    a = upload(oai, [chat_line("1")])
    b = upload(oai, [chat_line("2")])
    listed = oai.files.list(purpose="batch", limit=1)
    assert [f.id for f in listed.data] == [b]
    asc = [f.id for f in oai.files.list(purpose="batch", order="asc")]
    assert asc.index(a) < asc.index(b)
    assert oai.files.retrieve(a).bytes == len(jsonl([chat_line("1")]))
    deleted = oai.files.delete(a)
    assert deleted.deleted is True and deleted.id == a
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(a)
    with pytest.raises(openai.NotFoundError):
        oai.files.content(a)


def test_cancel_in_progress_keeps_partial_results(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = create(oai, [chat_line(f"c{i}") for i in range(20)])
    emu.advance(30 + 620)  # about half processed
    c = oai.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at is not None
    emu.advance(61)
    c = oai.batches.retrieve(b.id)
    assert c.status == "cancelled" and c.cancelled_at is not None
    done = c.request_counts.completed
    assert 0 < done < 20
    assert len(read_jsonl(oai, c.output_file_id)) == done
    assert c.error_file_id is None
    with pytest.raises(openai.BadRequestError) as exc:
        oai.batches.cancel(b.id)
    assert "cancelled" in exc.value.message


def test_cancel_while_validating(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = create(oai, [chat_line("v1")])
    c = oai.batches.cancel(b.id)
    assert c.status == "cancelling"
    emu.advance(3600)
    c = oai.batches.retrieve(b.id)
    assert c.status == "cancelled" and c.in_progress_at is None
    assert c.output_file_id is None and c.request_counts.total == 0


def test_cancel_completed_is_400(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    b = create(oai, [chat_line("done")])
    emu.advance(5000)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.batches.cancel(b.id)
    assert exc.value.status_code == 400
    assert "completed" in exc.value.message


def test_unknown_ids_are_404_envelopes(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        oai.batches.retrieve("batch_nope")
    body = exc.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        oai.batches.cancel("batch_nope")
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve("file-nope")


def test_auth_required(emu: EmulatorProcess) -> None:
    r = httpx.get(f"{emu.base_url}/v1/batches")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{emu.base_url}/v1/batches", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    r = httpx.get(f"{emu.base_url}/v1/batches", headers={"Authorization": "Bearer any-key"})
    assert r.status_code == 200


def test_stats_count_routes_and_uploads(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    before = emu.stats()
    b = create(oai, [chat_line("s")])
    oai.batches.retrieve(b.id)
    oai.batches.retrieve(b.id)
    after = emu.stats()
    assert after["batches_created"]["openai"] == before["batches_created"]["openai"] + 1
    assert after["files_uploaded"] == before["files_uploaded"] + 1
    route = "GET /v1/batches/{batch_id}"
    assert after["requests"][route] == before["requests"].get(route, 0) + 2


async def test_overlapping_creates_keep_creation_order_across_a_restart(tmp_path) -> None:
    """Creates that overlap (each awaits its input copy) get distinct sequence numbers, so a restarted
    emulator lists the batches in the order it created them."""
    data = tmp_path / "state"
    with running_emulator(time_factor=1.0, data_dir=data) as proc:
        client = openai.AsyncOpenAI(base_url=f"{proc.base_url}/v1", api_key="sk-test", max_retries=0)
        files = [
            await client.files.create(file=("in.jsonl", jsonl([chat_line(f"r{i}")])), purpose="batch")
            for i in range(8)
        ]
        created = await asyncio.gather(
            *(
                client.batches.create(
                    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                for f in files
            )
        )
        listed_before = [b.id for b in (await client.batches.list(limit=20)).data]
        await client.close()
    seqs = [json.loads((data / "openai" / f"{b.id}.json").read_text())["seq"] for b in created]
    assert len(set(seqs)) == len(seqs), f"overlapping creates shared a sequence number: {seqs}"
    with running_emulator(time_factor=1.0, data_dir=data) as proc:
        client = openai.AsyncOpenAI(base_url=f"{proc.base_url}/v1", api_key="sk-test", max_retries=0)
        listed_after = [b.id for b in (await client.batches.list(limit=20)).data]
        await client.close()
    assert listed_after == listed_before
