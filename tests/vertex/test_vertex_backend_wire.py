"""The Vertex backend's pure parts: input lines, labels, job states, prediction lines, the
connection's options and credentials handling (no network)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batch_provider.backends.registry import create_backend
from batch_provider.backends.vertex import auth, wire
from batch_provider.backends.vertex.connection import vertex_options
from batch_provider.core.errors import RequestRejected
from batch_provider.core.limits import LIMITS
from batch_provider.core.models import BatchEnding, BatchStatus, ItemStatus, LLMRequest, Message, Provider
from batch_provider.core.pricing import default_price_table
from batch_provider.core.wire_ids import swap_wire_id, wire_id

WIRE = wire_id("0123456789ab", 1, 7)


def backend() -> Any:
    return create_backend(
        "vertex", project="p", region="europe-west4", staging_uri="gs://b/stage", anonymous=True
    )


def request(**fields: Any) -> LLMRequest:
    fields.setdefault("model", "gemini-2.5-flash")
    fields.setdefault("messages", [Message(role="user", content="Hello there")])
    return LLMRequest(custom_id=WIRE, **fields)


def test_input_line_carries_the_wire_id_first_in_request_labels() -> None:
    encoded = backend().encode(request(max_tokens=32, system="Be brief", extra={"labels": {"team": "ml"}}))
    line = json.loads(encoded.line)
    assert list(line) == ["request"]
    assert next(iter(line["request"])) == "labels"
    assert line["request"]["labels"] == {"bp_id": WIRE, "team": "ml"}
    assert line["request"]["generationConfig"]["maxOutputTokens"] == 32
    assert line["request"]["systemInstruction"] == {"parts": [{"text": "Be brief"}]}
    assert "model" not in line["request"]
    assert encoded.group == encoded.model == "gemini-2.5-flash"
    assert backend().custom_id_of(encoded.line) == WIRE
    # a retry swaps the id in place (the id is the first JSON string of the line)
    other = wire_id("0123456789ab", 2, 0)
    assert backend().custom_id_of(swap_wire_id(encoded.line, WIRE, other)) == other


def test_model_resource_names() -> None:
    assert wire.model_resource("gemini-2.5-flash") == "publishers/google/models/gemini-2.5-flash"
    assert wire.model_resource("models/gemini-2.5-pro") == "publishers/google/models/gemini-2.5-pro"
    tuned = "projects/p/locations/us-central1/models/123"
    assert wire.model_resource(tuned) == tuned
    assert wire.short_model("publishers/google/models/gemini-2.5-flash") == "gemini-2.5-flash"


@pytest.mark.parametrize(
    ("labels", "why"),
    [({"bp_id": "x"}, "reserved"), ({"Team": "ml"}, "lowercase"), ({"team": "M L"}, "lowercase")],
)
def test_bad_request_labels_are_rejected_naming_the_field(labels: dict[str, str], why: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        backend().encode(request(extra={"labels": labels}))
    assert caught.value.field == "labels" and why in caught.value.reason


def test_wire_ids_fit_the_label_rule_and_row_ids_need_not() -> None:
    limits = LIMITS[Provider.VERTEX]
    assert limits.check_custom_id(WIRE) is None
    assert limits.check_custom_id("Row 1") is not None
    with pytest.raises(RequestRejected):
        backend().encode(LLMRequest(custom_id="Row 1", model="gemini-2.5-flash", input="hi"))


def test_tags_become_labels_and_a_display_name_that_find_matches() -> None:
    tags = {"bp_run": "a1b2c3d4e5f6a7b8c9d0e1f2", "bp_chunk": "1:0:0123456789ab", "team": "Data Eng"}
    labels = wire.job_labels(tags)
    assert labels == {"bp_run": tags["bp_run"], "bp_chunk": "1-0-0123456789ab", "team": "data_eng"}
    job = {"displayName": wire.display_name(tags), "labels": labels}
    assert wire.matches(job, tags)
    assert not wire.matches(job, {**tags, "bp_chunk": "1:1:0123456789ab"})
    assert not wire.matches({**job, "labels": {**labels, "bp_chunk": "1-1-0123456789ab"}}, tags)
    assert wire.list_filter(tags) == 'labels.bp_run="a1b2c3d4e5f6a7b8c9d0e1f2"'


@pytest.mark.parametrize(
    ("native", "status", "ending"),
    [
        ("JOB_STATE_QUEUED", BatchStatus.PENDING, None),
        ("JOB_STATE_PENDING", BatchStatus.PENDING, None),
        ("JOB_STATE_RUNNING", BatchStatus.RUNNING, None),
        ("JOB_STATE_UPDATING", BatchStatus.RUNNING, None),
        ("JOB_STATE_PAUSED", BatchStatus.RUNNING, None),
        ("JOB_STATE_CANCELLING", BatchStatus.FINALIZING, None),
        ("JOB_STATE_SUCCEEDED", BatchStatus.ENDED, BatchEnding.COMPLETED),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", BatchStatus.ENDED, BatchEnding.COMPLETED),
        ("JOB_STATE_FAILED", BatchStatus.ENDED, BatchEnding.FAILED),
        ("JOB_STATE_CANCELLED", BatchStatus.ENDED, BatchEnding.CANCELLED),
        ("JOB_STATE_EXPIRED", BatchStatus.ENDED, BatchEnding.EXPIRED),
    ],
)
def test_every_job_state_maps(native: str, status: BatchStatus, ending: BatchEnding | None) -> None:
    job = {
        "name": "projects/p/locations/r/batchPredictionJobs/1",
        "state": native,
        "createTime": "2026-12-01T10:00:00Z",
        "endTime": "2026-12-01T11:00:00Z",
        "completionStats": {"successfulCount": "6", "failedCount": "1", "incompleteCount": "3"},
    }
    state = wire.state_of(job)
    assert (state.status, state.ending, state.native_status) == (status, ending, native)
    assert state.counts.total == 10 and state.counts.succeeded == 6 and state.counts.errored == 1
    if ending is BatchEnding.EXPIRED:
        assert state.counts.expired == 3
    if ending is BatchEnding.CANCELLED:
        assert state.counts.cancelled == 3
    assert (state.ended_at is not None) == (status is BatchStatus.ENDED)


def test_a_failed_job_for_lack_of_capacity_is_retryable() -> None:
    job = {"name": "j", "state": "JOB_STATE_FAILED", "error": {"code": 8, "message": "quota"}}
    assert wire.state_of(job).retryable and wire.state_of(job).error_message == "quota"
    job["error"] = {"code": 3, "message": "bad input"}
    assert not wire.state_of(job).retryable


def prediction(status: Any = "", response: Any = None, key: str | None = WIRE) -> dict[str, Any]:
    labels = {"bp_id": key} if key else {}
    line: dict[str, Any] = {"status": status, "processed_time": "2026-12-01T10:00:00Z"}
    line["request"] = {"labels": labels, "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    if response is not None:
        line["response"] = response
    return line


def test_a_prediction_line_with_usage_cached_tokens_apart() -> None:
    response = {
        "candidates": [{"content": {"parts": [{"text": '{"a": 1}'}]}, "finishReason": "STOP"}],
        "modelVersion": "gemini-2.5-flash-001",
        "usageMetadata": {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 40,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 3,
        },
    }
    record = wire.record_of(prediction(response=response), "job-1")
    assert record is not None and record.status is ItemStatus.SUCCEEDED
    assert (record.custom_id, record.provider, record.batch_id) == (WIRE, "vertex", "job-1")
    assert record.output_text == '{"a": 1}' and record.finish_reason == "stop"
    used = record.usage
    assert (used.input_tokens, used.cache_read_tokens, used.output_tokens) == (60, 40, 10)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        ("429 Resource exhausted, please retry later", True),
        ("Internal error occurred (500)", True),
        ("UNAVAILABLE: the model is overloaded", True),
        ('{"error": {"code": 503, "message": "backend"}}', True),
        ({"code": 8, "message": "quota"}, True),
        ("400 Request contains an invalid argument", False),
        ('Too Many Requests: {"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}}', True),
        ('Bad Request: {"error": {"code": 400, "message": "m", "status": "INVALID_ARGUMENT"}}', False),
        ({"code": 3, "message": "INVALID_ARGUMENT: bad schema"}, False),
    ],
)
def test_line_status_errors_are_mapped(status: Any, retryable: bool) -> None:
    record = wire.record_of(prediction(status=status), "job-1")
    assert record is not None and record.status is ItemStatus.ERRORED
    assert record.error is not None and record.error.retryable is retryable
    assert record.provider == "vertex"


def test_a_line_without_status_or_response_is_an_error_and_one_without_id_is_skipped() -> None:
    record = wire.record_of(prediction(), "job-1")
    assert record is not None and record.status is ItemStatus.ERRORED
    assert wire.record_of(prediction(response={"candidates": []}, key=None), "job-1") is None
    # a request echoed as a JSON string is read too
    line = prediction(response={"candidates": [{"content": {"parts": [{"text": "x"}]}}]})
    line["request"] = json.dumps(line["request"])
    assert wire.record_of(line, "job-1").custom_id == WIRE  # type: ignore[union-attr]


def test_prices_are_gemini_prices_at_the_batch_rate_without_stacking_the_cache_discount() -> None:
    from batch_provider.core.models import Usage

    table = default_price_table()
    plain = table.cost("vertex", "gemini-2.5-flash", Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    same = table.cost("gemini", "gemini-2.5-flash", Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    assert plain.batch_usd == pytest.approx(plain.standard_usd * 0.5) and plain.batch_usd == same.batch_usd
    resource = "publishers/google/models/gemini-2.5-flash"
    cached = table.cost("vertex", resource, Usage(cache_read_tokens=1_000_000))
    assert cached.batch_usd > 0 and cached.batch_usd == pytest.approx(cached.standard_usd)


def test_connection_options_and_errors_name_fields_never_values() -> None:
    key = json.dumps({"type": "service_account", "private_key": "SECRET-PEM"})
    options = vertex_options(
        "v", password=key, extra={"project": "p", "staging_uri": "gs://b/s"}, base_url="http://127.0.0.1:9"
    )
    assert options == {
        "project": "p",
        "staging_uri": "gs://b/s",
        "service_account_json": key,
        "base_url": "http://127.0.0.1:9",
    }
    with pytest.raises(ValueError, match="staging_uri") as caught:
        vertex_options("v", password=key, extra={"project": "p"}, base_url=None)
    assert "SECRET" not in str(caught.value)
    with pytest.raises(ValueError, match="not valid JSON") as bad:
        auth.load_credentials("{not json SECRET")
    assert "SECRET" not in str(bad.value)
    with pytest.raises(ValueError, match="gs://"):
        create_backend("vertex", project="p", staging_uri="s3://b/x", anonymous=True)
    with pytest.raises(ValueError, match="project"):
        create_backend("vertex", staging_uri="gs://b/x", anonymous=True)


def test_a_missing_extra_names_it() -> None:
    with pytest.raises(auth.MissingVertexExtraError, match=r"\[vertex\]"):
        auth.require("gcsfs_that_is_not_installed")


class FakeCredentials:
    """Counts refreshes and records the thread they ran in (google-auth's refresh blocks)."""

    def __init__(self, expiry: datetime | None) -> None:
        self.token: str | None = None
        self.expiry = expiry
        self.threads: list[int] = []

    def refresh(self, _request: Any) -> None:
        self.threads.append(threading.get_ident())
        self.token = f"tok-{len(self.threads)}"
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)


async def test_tokens_refresh_off_the_event_loop_once_and_again_near_expiry() -> None:
    creds = FakeCredentials(expiry=None)
    bearer = auth.BearerAuth(creds)
    tokens = await asyncio.gather(*(bearer.token() for _ in range(5)))
    assert tokens == ["tok-1"] * 5 and creds.threads and threading.get_ident() not in creds.threads
    creds.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=2)  # inside the margin
    assert await bearer.token() == "tok-2"


async def test_anonymous_credentials_send_a_placeholder_never_a_real_token() -> None:
    credentials, project = auth.load_credentials(anonymous=True)
    assert project is None and await auth.BearerAuth(credentials).token() == auth.ANONYMOUS_TOKEN


def test_links_go_to_the_cloud_console_or_the_emulator() -> None:
    from batch_provider.links.batch import batch_url

    name = "projects/my-proj/locations/europe-west4/batchPredictionJobs/123"
    assert batch_url("vertex", name) == (
        "https://console.cloud.google.com/vertex-ai/locations/europe-west4/batch-predictions/123"
        "?project=my-proj"
    )
    public = "https://europe-west4-aiplatform.googleapis.com"
    assert batch_url("vertex", name, public) == batch_url("vertex", name)
    assert batch_url("vertex", name, "http://127.0.0.1:8787/") == f"http://127.0.0.1:8787/v1/{name}"


async def test_without_the_extra_building_or_reading_names_it(monkeypatch: Any) -> None:
    import sys

    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "google.auth.credentials", None)
        with pytest.raises(auth.MissingVertexExtraError, match=r"\[vertex\]"):
            backend()
    async with backend() as built:
        monkeypatch.setitem(sys.modules, "gcsfs.core", None)
        with pytest.raises(auth.MissingVertexExtraError, match=r"gcsfs .*\[vertex\]"):
            await built.prediction_files({"outputInfo": {"gcsOutputDirectory": "gs://b/out/x"}})
