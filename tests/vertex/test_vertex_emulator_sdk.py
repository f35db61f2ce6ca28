"""The emulator's Vertex AI batch prediction routes driven by the official ``google-genai`` SDK in
Vertex mode, an independent client; the job's input and predictions go through gcsfs and the GCS
emulator on loopback."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from vertex_emu_support import INPUT_BUCKET, LOCATION, MODEL, OUTPUT_BUCKET, PROJECT, jsonl, request_line

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402

STATE = types.JobState


@pytest.fixture
def client(vertex_emu: Any) -> Any:
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="ya29.emulator"),
        http_options=types.HttpOptions(base_url=vertex_emu.base_url, api_version="v1"),
    )


def _upload(gcs: Any, lines: list[dict[str, Any]]) -> str:
    path = f"{INPUT_BUCKET}/in/{uuid.uuid4().hex}.jsonl"
    gcs.pipe(path, jsonl(lines))
    return f"gs://{path}"


def _dest() -> str:
    return f"gs://{OUTPUT_BUCKET}/out/{uuid.uuid4().hex}"


def _predictions(gcs: Any, job: Any) -> list[dict[str, Any]]:
    directory = job.output_info.gcs_output_directory if job.output_info else None
    assert directory, "a finished job names its output directory"
    files = gcs.glob(directory.removeprefix("gs://") + "/predictions*.jsonl")
    return [json.loads(line) for f in files for line in gcs.cat(f).decode().splitlines() if line.strip()]


def test_lifecycle_create_get_list_predictions_and_delete(client: Any, vertex_emu: Any, gcs: Any) -> None:
    system = {"parts": [{"text": "You are a careful ticket classifier. " * 200}]}
    lines = [request_line(f"ticket {i}", {"bp_id": f"row-{i}"}, maxOutputTokens=32) for i in range(6)]
    for line in lines:
        line["request"]["systemInstruction"] = system
    src = _upload(gcs, lines)
    job = client.batches.create(
        model=MODEL, src=src, config=types.CreateBatchJobConfig(dest=_dest(), display_name="sdk-life")
    )
    assert job.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    assert job.state in (STATE.JOB_STATE_PENDING, STATE.JOB_STATE_RUNNING)
    assert job.model == f"publishers/google/models/{MODEL}" and job.src.gcs_uri == [src]
    assert job.name in [j.name for j in client.batches.list(config={"page_size": 50})]

    vertex_emu.advance(86400)
    done = client.batches.get(name=job.name)
    assert done.state == STATE.JOB_STATE_SUCCEEDED and done.end_time is not None
    assert done.completion_stats.successful_count == 6 and done.completion_stats.failed_count == 0
    out = _predictions(gcs, done)
    assert sorted(o["request"]["labels"]["bp_id"] for o in out) == [f"row-{i}" for i in range(6)]
    assert [o["request"]["labels"]["bp_id"] for o in out] != [f"row-{i}" for i in range(6)]  # no order
    assert all(
        o["status"] == "" and o["response"]["candidates"][0]["content"]["parts"][0]["text"] for o in out
    )
    usage = [o["response"]["usageMetadata"] for o in out]
    assert all(u["candidatesTokenCount"] <= 32 for u in usage)
    # implicit caching of the shared system instruction: later rows read it, inside the prompt count
    cached = [u.get("cachedContentTokenCount", 0) for u in usage]
    assert sum(1 for c in cached if c > 0) == 5 and all(
        c <= u["promptTokenCount"] for c, u in zip(cached, usage, strict=True)
    )

    deleted = client.batches.delete(name=job.name)
    assert deleted.done is True
    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name=job.name)
    assert gone.value.code == 404
    assert _predictions(gcs, done), "predictions stay in GCS after the job is deleted"


def test_cancel_keeps_the_rows_done_and_refuses_a_second_cancel(
    client: Any, vertex_emu: Any, gcs: Any
) -> None:
    vertex_emu.vertex_settings(expire_seconds=72 * 3600)
    src = _upload(gcs, [request_line(f"row {i}", {"bp_id": f"c{i}"}) for i in range(40)])
    job = client.batches.create(model=MODEL, src=src, config=types.CreateBatchJobConfig(dest=_dest()))
    vertex_emu.advance(30 + 1200 / 2)  # running, about half the rows done
    client.batches.cancel(name=job.name.rsplit("/", 1)[-1])
    assert client.batches.get(name=job.name).state in (STATE.JOB_STATE_CANCELLING, STATE.JOB_STATE_CANCELLED)
    with pytest.raises(errors.ClientError):
        client.batches.delete(name=job.name)  # not finished yet
    vertex_emu.advance(600)
    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == STATE.JOB_STATE_CANCELLED
    stats = cancelled.completion_stats
    assert 0 < stats.successful_count < 40 and stats.successful_count + stats.incomplete_count == 40
    out = _predictions(gcs, cancelled)
    assert len(out) == stats.successful_count and all(o["status"] == "" for o in out)
    with pytest.raises(errors.ClientError) as refused:
        client.batches.cancel(name=job.name)
    assert refused.value.code == 400 and refused.value.status == "FAILED_PRECONDITION"


def test_expiry_exports_the_rows_finished_in_time(client: Any, vertex_emu: Any, gcs: Any) -> None:
    lines = [request_line("first [[emu:expire]]", {"bp_id": "e0"})]
    lines += [request_line(f"row {i}", {"bp_id": f"e{i}"}) for i in range(1, 10)]
    job = client.batches.create(
        model=MODEL, src=_upload(gcs, lines), config=types.CreateBatchJobConfig(dest=_dest())
    )
    vertex_emu.advance(24 * 3600)
    assert client.batches.get(name=job.name).state == STATE.JOB_STATE_RUNNING
    vertex_emu.advance(72 * 3600)
    expired = client.batches.get(name=job.name)
    assert expired.state == STATE.JOB_STATE_EXPIRED
    assert expired.completion_stats.successful_count == 5 and expired.completion_stats.incomplete_count == 5
    assert len(_predictions(gcs, expired)) == 5


def test_item_errors_give_status_lines_and_partial_success(client: Any, vertex_emu: Any, gcs: Any) -> None:
    lines = [
        request_line("fine", {"bp_id": "ok"}),
        request_line("bad [[emu:fail400]]", {"bp_id": "bad"}),
        request_line("busy [[emu:fail429]]", {"bp_id": "busy"}),
        request_line("down [[emu:fail503]]", {"bp_id": "down"}),
        {"request": {"contents": [], "labels": {"bp_id": "empty"}}},
    ]
    job = client.batches.create(
        model=MODEL, src=_upload(gcs, lines), config=types.CreateBatchJobConfig(dest=_dest())
    )
    vertex_emu.advance(86400)
    done = client.batches.get(name=job.name)
    assert done.state == STATE.JOB_STATE_PARTIALLY_SUCCEEDED
    assert done.completion_stats.successful_count == 1 and done.completion_stats.failed_count == 4
    by_id = {o["request"]["labels"]["bp_id"]: o for o in _predictions(gcs, done)}
    assert by_id["ok"]["status"] == "" and "response" in by_id["ok"]
    for row, code, status in (
        ("bad", 400, "INVALID_ARGUMENT"),
        ("busy", 429, "RESOURCE_EXHAUSTED"),
        ("down", 503, "UNAVAILABLE"),
        ("empty", 400, "INVALID_ARGUMENT"),
    ):
        line = by_id[row]
        assert "response" not in line
        reason, _, envelope = line["status"].partition(": ")
        assert reason and json.loads(envelope)["error"]["code"] == code
        assert json.loads(envelope)["error"]["status"] == status


def test_unknown_model_and_bad_requests_are_refused(client: Any, gcs: Any) -> None:
    src = _upload(gcs, [request_line("x")])
    with pytest.raises(errors.ClientError) as unknown:
        client.batches.create(
            model="gemini-0.1-nonexistent", src=src, config=types.CreateBatchJobConfig(dest=_dest())
        )
    assert unknown.value.code == 404 and unknown.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as bq:
        client.batches.create(model=MODEL, src="bq://p.d.t", config=types.CreateBatchJobConfig(dest=_dest()))
    assert bq.value.code == 400 and "BigQuery" in bq.value.message
