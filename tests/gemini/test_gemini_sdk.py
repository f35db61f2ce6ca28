"""The emulator's Gemini routes driven by the official ``google-genai`` SDK, an independent client.

The SDK defaults to API version ``v1`` for the Developer API; the emulator serves Gemini under
``v1beta`` only (``/v1/batches`` and ``/v1/files`` are OpenAI's there), so the client names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

MODEL = "gemini-2.5-flash"


@pytest.fixture
def client(emu: Any) -> Any:
    options = types.HttpOptions(base_url=emu.base_url, api_version="v1beta")
    return genai.Client(api_key="k", http_options=options)


def _request(text: str, **config: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        entry["config"] = config
    return entry


def test_inline_batch_create_get_list_and_results(client: Any, emu: Any) -> None:
    schema = {"type": "OBJECT", "properties": {"label": {"type": "STRING", "enum": ["a", "b"]}}}
    src = [
        {**_request("hello there"), "metadata": {"key": "first"}},
        {
            **_request("classify", response_mime_type="application/json", response_schema=schema),
            "metadata": {"key": "second"},
        },
        {**_request("fail me"), "metadata": {"key": "emu-fail429-third"}},
    ]
    job = client.batches.create(model=MODEL, src=src, config={"display_name": "sdk-inline"})
    assert job.name.startswith("batches/") and job.display_name == "sdk-inline"
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.name in [j.name for j in client.batches.list(config={"page_size": 5})]
    emu.advance(86400)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.end_time is not None
    answers = {r.metadata["key"]: r for r in done.dest.inlined_responses}
    assert answers["first"].response.text
    assert json.loads(answers["second"].response.text)["label"] in ("a", "b")
    assert answers["first"].response.usage_metadata.prompt_token_count >= 1
    assert answers["emu-fail429-third"].error.code == 8  # google.rpc.Status: RESOURCE_EXHAUSTED


def test_file_batch_upload_download_cancel_and_delete(client: Any, emu: Any, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [{"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"row {i}"}]}]}} for i in range(4)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    uploaded = client.files.upload(file=path, config={"mime_type": "application/jsonl", "display_name": "in"})
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == path.stat().st_size
    assert client.files.get(name=uploaded.name).state == types.FileState.ACTIVE

    job = client.batches.create(model=MODEL, src=uploaded.name)
    emu.advance(86400)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    body = client.files.download(file=done.dest.file_name)
    out = [json.loads(line) for line in body.decode().splitlines()]
    assert sorted(o["key"] for o in out) == ["k0", "k1", "k2", "k3"] and all("response" in o for o in out)

    running = client.batches.create(model=MODEL, src=[_request("slow")])
    client.batches.cancel(name=running.name)
    emu.advance(600)
    assert client.batches.get(name=running.name).state == types.JobState.JOB_STATE_CANCELLED
    with pytest.raises(errors.ClientError) as refused:
        client.batches.cancel(name=running.name)
    assert refused.value.code == 400 and refused.value.status == "FAILED_PRECONDITION"

    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name=job.name)
    assert gone.value.code == 404
    client.files.delete(name=uploaded.name)


def test_google_error_envelopes_auth_and_faults(emu: Any) -> None:
    base = f"{emu.base_url}/v1beta/batches"
    missing = httpx.get(base)
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    assert httpx.get(base, params={"key": "k"}).status_code == 200
    emu.set_faults(
        {
            "rules": [
                {"match": "GET /v1beta/batches", "kind": "429", "times": 1, "retry_after": 2},
                {"match": "GET /v1beta/batches", "kind": "quota", "times": 1},
                {"match": "GET /v1beta/batches", "kind": "503", "times": 1},
            ]
        }
    )
    headers = {"x-goog-api-key": "k"}
    limited = httpx.get(base, headers=headers)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    error = limited.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"][0]["@type"].endswith("RetryInfo")
    quota = httpx.get(base, headers=headers)
    assert quota.status_code == 429 and "retry-after" not in quota.headers
    unavailable = httpx.get(base, headers=headers)
    assert unavailable.status_code == 503 and unavailable.json()["error"]["status"] == "UNAVAILABLE"
    assert httpx.get(base, headers=headers).status_code == 200


def test_bad_create_bodies_are_400s(emu: Any) -> None:
    url = f"{emu.base_url}/v1beta/models/{MODEL}:batchGenerateContent"
    headers = {"x-goog-api-key": "k"}
    for body in (
        {},
        {"batch": {"inputConfig": {}}},
        {"batch": {"inputConfig": {"requests": {"requests": []}}}},
        {"batch": {"inputConfig": {"fileName": "files/nope"}}},
        {"batch": {"displayName": "x" * 200, "inputConfig": {"requests": {"requests": [{"request": {}}]}}}},
        {
            "batch": {
                "displayName": "emu_faults=bogus",
                "inputConfig": {"requests": {"requests": [{"request": {}}]}},
            }
        },
    ):
        answer = httpx.post(url, headers=headers, json=body)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    httpx.post(f"{emu.base_url}/_emu/gemini", json={"inline_max_bytes": 1000})
    big = {"batch": {"inputConfig": {"requests": {"requests": [{"request": {"contents": "x" * 2000}}]}}}}
    too_big = httpx.post(url, headers=headers, json=big)
    assert too_big.status_code == 400 and "payload size" in too_big.json()["error"]["message"]


def test_batches_and_files_survive_a_restart(client: Any, emu: Any, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"key": "only", "request": {"contents": [{"parts": [{"text": "x"}]}]}}) + "\n")
    uploaded = client.files.upload(file=path, config={"mime_type": "application/jsonl"})
    job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "restart"})
    emu.restart()
    assert client.files.get(name=uploaded.name).size_bytes == path.stat().st_size
    emu.advance(86400)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.display_name == "restart"
    body = client.files.download(file=done.dest.file_name)
    assert json.loads(body)["key"] == "only"
    names = [j.name for j in client.batches.list(config={"page_size": 2})]
    assert job.name in names and len(names) == len(set(names))
