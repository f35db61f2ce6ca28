"""Gemini translation, states, display names and result parsing, without HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from batch_provider.backends.gemini import wire as gw
from batch_provider.backends.gemini.backend import GeminiBackend
from batch_provider.backends.registry import create_backend
from batch_provider.core.errors import RequestRejected
from batch_provider.core.limits import LIMITS
from batch_provider.core.models import BatchEnding, BatchStatus, ItemStatus, LLMRequest, Provider


@pytest.fixture
def backend() -> GeminiBackend:
    made = create_backend("gemini", api_key="k", base_url="http://127.0.0.1:9")
    assert isinstance(made, GeminiBackend) and made.keeps_tags
    return made


def decoded(backend: GeminiBackend, **fields: object) -> dict:
    fields.setdefault("custom_id", "c1")
    fields.setdefault("model", "gemini-2.5-flash")
    encoded = backend.encode(LLMRequest(**fields))
    assert encoded.group == encoded.model == "gemini-2.5-flash"
    line = json.loads(encoded.line)
    assert list(line) == ["key", "request"] and backend.custom_id_of(encoded.line) == fields["custom_id"]
    return line["request"]


def test_neutral_request_translation(backend: GeminiBackend) -> None:
    body = decoded(
        backend,
        system="be brief",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "data": "aGk=", "media_type": "image/png"},
                    {"type": "image", "url": "gs://b/cat.jpg"},
                ],
            },
        ],
        max_tokens=100,
        temperature=0.2,
        stop=["END"],
        response_schema={"type": "object", "properties": {"a": {"type": "string"}}},
        extra={"generationConfig": {"topK": 3}, "safetySettings": []},
    )
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "aGk="}}
    assert body["contents"][2]["parts"][2] == {
        "fileData": {"mimeType": "image/jpeg", "fileUri": "gs://b/cat.jpg"}
    }
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 0.2,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
        "topK": 3,
    }
    assert body["safetySettings"] == [] and "model" not in body


def test_native_input_and_rejections(backend: GeminiBackend) -> None:
    native = {"model": "models/gemini-2.5-pro", "contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    encoded = backend.encode(LLMRequest(custom_id="n", native=native, max_tokens=7))
    assert encoded.model == "gemini-2.5-pro"
    assert json.loads(encoded.line)["request"]["generationConfig"] == {"maxOutputTokens": 7}
    assert backend.custom_id_of(encoded.line) == "n"
    assert decoded(backend, input="plain text")["contents"] == [
        {"role": "user", "parts": [{"text": "plain text"}]}
    ]
    for fields, field in (
        ({"custom_id": "a", "model": "m"}, "messages"),
        ({"custom_id": "a", "input": "x"}, "model"),
        ({"custom_id": "a", "model": "m", "input": "x", "kind": "embedding"}, "kind"),
        ({"custom_id": "bad\nid", "model": "m", "input": "x"}, "custom_id"),
        (
            {
                "custom_id": "a",
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "image", "url": "https://x/y"}]}],
            },
            "messages",
        ),
    ):
        with pytest.raises(RequestRejected) as rejected:
            backend.encode(LLMRequest(**fields))
        assert rejected.value.field == field


def test_wants_json_and_inline_wrapping(backend: GeminiBackend) -> None:
    plain = backend.encode(LLMRequest(custom_id="p", model="m", input="x"))
    structured = backend.encode(
        LLMRequest(custom_id="s", model="m", input="x", response_schema={"type": "object"})
    )
    assert not backend.wants_json(plain.line) and backend.wants_json(structured.line)
    wrapped = json.loads(gw.inline_request(structured.line))
    assert wrapped["metadata"] == {"key": "s"} and wrapped["request"]["contents"]


def test_display_name_round_trip_and_limit() -> None:
    tags = {"team": "eval ops", "bp_chunk": "1:0:abcdef0123456789", "bp_run": "a" * 24}
    name = gw.display_name(tags)
    assert name.startswith("bp_run=") and len(name) <= gw.DISPLAY_NAME_MAX
    assert gw.tags_of_display_name(name) == {
        "bp_run": "a" * 24,
        "bp_chunk": "1:0:abcdef0123456789",
        "team": "eval_ops",
    }
    crowded = gw.display_name({**tags, "note": "x" * 200})
    assert "note=" not in crowded and "team=eval_ops" in crowded
    with pytest.raises(ValueError, match="does not fit"):
        gw.display_name({"bp_run": "r" * 200})


@pytest.mark.parametrize(
    ("native", "status", "ending"),
    [
        ("BATCH_STATE_PENDING", BatchStatus.PENDING, None),
        ("JOB_STATE_PENDING", BatchStatus.PENDING, None),
        ("BATCH_STATE_RUNNING", BatchStatus.RUNNING, None),
        ("JOB_STATE_RUNNING", BatchStatus.RUNNING, None),
        ("BATCH_STATE_SUCCEEDED", BatchStatus.ENDED, BatchEnding.COMPLETED),
        ("JOB_STATE_SUCCEEDED", BatchStatus.ENDED, BatchEnding.COMPLETED),
        ("BATCH_STATE_FAILED", BatchStatus.ENDED, BatchEnding.FAILED),
        ("BATCH_STATE_CANCELLED", BatchStatus.ENDED, BatchEnding.CANCELLED),
        ("JOB_STATE_CANCELLED", BatchStatus.ENDED, BatchEnding.CANCELLED),
        ("BATCH_STATE_EXPIRED", BatchStatus.ENDED, BatchEnding.EXPIRED),
        ("JOB_STATE_EXPIRED", BatchStatus.ENDED, BatchEnding.EXPIRED),
    ],
)
def test_state_mapping(native: str, status: BatchStatus, ending: BatchEnding | None) -> None:
    operation = {
        "name": "batches/b1",
        "metadata": {
            "name": "batches/b1",
            "state": native,
            "createTime": "2026-11-21T10:00:00.000000Z",
            "endTime": "2026-11-21T11:00:00Z",
            "batchStats": {"requestCount": "10", "successfulRequestCount": "6", "failedRequestCount": "1"},
        },
    }
    state = gw.state_of(operation)
    assert (state.batch_id, state.status, state.ending, state.native_status) == (
        "batches/b1",
        status,
        ending,
        native,
    )
    assert state.created_at == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert (state.counts.total, state.counts.succeeded, state.counts.errored) == (10, 6, 1)
    if ending is BatchEnding.EXPIRED:
        assert state.counts.expired == 3
    if status is not BatchStatus.ENDED:
        assert state.counts.processing == 3 and state.ended_at is None


def test_failed_batch_error_message() -> None:
    failed = gw.state_of(
        {
            "name": "batches/x",
            "metadata": {"state": "BATCH_STATE_FAILED"},
            "error": {"code": 3, "message": "bad file"},
        }
    )
    assert failed.error_message == "bad file" and not failed.retryable
    quota = gw.state_of(
        {
            "name": "batches/x",
            "metadata": {"state": "BATCH_STATE_FAILED"},
            "error": {"code": 8, "message": "quota"},
        }
    )
    assert quota.retryable


def test_results_usage_excludes_cached_tokens_and_counts_thoughts() -> None:
    line = {
        "key": "k1",
        "response": {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"text": "thinking", "thought": True}, {"text": '{"a":'}, {"text": "1}"}],
                    },
                    "finishReason": "MAX_TOKENS",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 100,
                "cachedContentTokenCount": 40,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 5,
            },
            "modelVersion": "gemini-2.5-flash-001",
        },
    }
    record = gw.record_of(line, "batches/b")
    assert record.status is ItemStatus.SUCCEEDED and record.output_text == '{"a":1}'
    assert (record.usage.input_tokens, record.usage.cache_read_tokens, record.usage.output_tokens) == (
        60,
        40,
        25,
    )
    assert record.finish_reason == "max_tokens" and record.model == "gemini-2.5-flash-001"
    assert record.provider == "gemini" and record.batch_id == "batches/b"


@pytest.mark.parametrize(
    ("error", "retryable", "kind"),
    [
        ({"code": 13, "message": "internal"}, True, "INTERNAL"),
        ({"code": 8, "message": "quota"}, True, "RESOURCE_EXHAUSTED"),
        ({"code": 3, "message": "bad"}, False, "INVALID_ARGUMENT"),
        ({"code": 503, "message": "x", "status": "UNAVAILABLE"}, True, "UNAVAILABLE"),
        ({"code": 400, "message": "x"}, False, "http_400"),
        ({"code": 500, "message": "x"}, True, "http_500"),
    ],
)
def test_item_errors(error: dict, retryable: bool, kind: str) -> None:
    inline = {"error": error, "metadata": {"key": "k9"}}
    record = gw.record_of(inline, "batches/b", "gemini-2.5-flash")
    assert record.custom_id == "k9" and record.status is ItemStatus.ERRORED
    assert record.error is not None and (record.error.retryable, record.error.type) == (retryable, kind)


def test_blocked_prompt_is_not_retryable() -> None:
    record = gw.record_of(
        {"key": "b", "response": {"promptFeedback": {"blockReason": "SAFETY"}}}, "batches/b"
    )
    assert record.status is ItemStatus.ERRORED and record.error is not None
    assert (record.error.type, record.error.code, record.error.retryable) == ("blocked", "SAFETY", False)


def test_limits_row_and_key_never_in_repr() -> None:
    limits = LIMITS[Provider.GEMINI]
    assert limits.one_model_per_batch and limits.max_bytes_per_batch == 2048 * 1024 * 1024
    made = GeminiBackend(api_key="secret-value", base_url="http://127.0.0.1:9")
    assert "secret-value" not in repr(made)
    with pytest.raises(ValueError, match="api_key"):
        GeminiBackend(api_key="")
