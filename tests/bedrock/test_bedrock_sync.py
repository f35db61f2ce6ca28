"""Bedrock Runtime ``InvokeModel`` and ``Converse`` on the emulator: boto3's own ``bedrock-runtime``
client gets the answer and usage a job's record with the same ``modelInput`` gets, per-key
throttling as botocore reads it; :class:`BedrockSyncCaller` turns one part-file line into the
record the job would have written, and surfaces a 429 or a 5xx to the sync fallback's runner
after one attempt (botocore's own retries are off for this paid call)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from bedrock_support import (
    CLAUDE,
    INPUT_BUCKET,
    KEYS,
    OUTPUT_BUCKET,
    REGION,
    ROLE,
    backend_for,
    bedrock_client,
    s3_client,
)
from botocore.config import Config
from botocore.exceptions import ClientError

from batch_provider.backends.bedrock import wire as bw
from batch_provider.backends.bedrock.backend import BedrockBackend
from batch_provider.backends.bedrock.sync import BedrockSyncCaller, never_sent
from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.errors import InvalidRequestError, ProviderUnavailableError, RateLimitedError
from batch_provider.core.models import ItemStatus, LLMRequest
from batch_provider.core.sync_fallback import SyncRow, row_tokens
from batch_provider.emulator.bedrock.outputs import model_output
from batch_provider.emulator.outputs import body_hash

SEED = 0  # the session emulator's seed
NOVA = "us.amazon.nova-lite-v1:0"
INVOKE = "POST /model/{model:path}/invoke"


def runtime_client(emu: Any, **keys: str) -> Any:
    """boto3's ``bedrock-runtime`` client on the emulator, without botocore retries."""
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=emu.base_url,
        region_name=REGION,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        **(keys or KEYS),
    )


def claude_body(text: str, max_tokens: int = 40) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }


def invoke(client: Any, model: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    response = client.invoke_model(modelId=model, body=json.dumps(body), contentType="application/json")
    return json.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]


@pytest.fixture
def limits(emu: Any) -> Iterator[Any]:
    """The session emulator with no sync limits before and after the test."""
    emu.sync_settings(rpm=0, tpm=0, window_seconds=60, latency_seconds=0)
    yield emu
    emu.sync_settings(rpm=0, tpm=0, window_seconds=60, latency_seconds=0)


def invocations(emu: Any) -> int:
    return int(emu.stats()["requests"].get(INVOKE, 0))


def new_key() -> dict[str, str]:
    """Keys of an access key id of its own: rate-limit windows are per key and outlive a test."""
    return {"aws_access_key_id": f"AKIA{uuid.uuid4().hex[:16].upper()}", "aws_secret_access_key": "testing"}


def own_backend(emu: Any) -> BedrockBackend:
    """A backend on the emulator signing with an access key id of its own."""
    return BedrockBackend(
        role_arn=ROLE,
        s3_uri=f"s3://{INPUT_BUCKET}/sync",
        region_name=REGION,
        bedrock_endpoint_url=emu.base_url,
        s3_endpoint_url=emu.s3_endpoint,
        **new_key(),
    )


def counted(emu: Any, before: dict[str, Any]) -> tuple[int, int]:
    """(answered, throttled) synchronous calls since ``before`` (a ``sync_settings()``)."""
    now = emu.sync_settings()
    return now["served"] - before["served"], now["limited"] - before["limited"]


def job_output(emu: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The ``.jsonl.out`` line a completed one-record job gives ``body``."""
    emu.bedrock_settings(min_records=1)
    prefix = f"sync-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(emu)
    line = json.dumps({"recordId": "REC0000001", "modelInput": body})
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/records.jsonl", Body=line.encode())
    bedrock = bedrock_client(emu)
    arn = bedrock.create_model_invocation_job(
        jobName=f"job-{prefix}",
        roleArn=ROLE,
        modelId=CLAUDE,
        inputDataConfig={
            "s3InputDataConfig": {
                "s3InputFormat": "JSONL",
                "s3Uri": f"s3://{INPUT_BUCKET}/{prefix}/records.jsonl",
            }
        },
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUTPUT_BUCKET}/{prefix}/"}},
    )["jobArn"]
    emu.advance(2 * 86400)
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed"
    listing = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"{prefix}/")["Contents"]
    key = next(item["Key"] for item in listing if item["Key"].endswith("records.jsonl.out"))
    (out,) = s3.get_object(Bucket=OUTPUT_BUCKET, Key=key)["Body"].read().splitlines()
    return json.loads(out)


def test_boto3_invoke_model_answers_as_the_job_record_would(limits: Any) -> None:
    emu = limits
    body = claude_body("Summarise item 0")
    client = runtime_client(emu)
    answer, headers = invoke(client, CLAUDE, body)

    # the same modelInput in a job: its .jsonl.out record holds the same output
    line = job_output(emu, body)
    assert line["modelInput"] == body
    batch = line["modelOutput"]
    assert answer["content"] == batch["content"] and answer["stop_reason"] == batch["stop_reason"]
    usage = answer["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        batch["usage"]["input_tokens"],
        batch["usage"]["output_tokens"],
    )
    assert answer == model_output("anthropic", CLAUDE, body, SEED)
    assert int(headers["x-amzn-bedrock-input-token-count"]) == usage["input_tokens"]
    assert int(headers["x-amzn-bedrock-output-token-count"]) == usage["output_tokens"]

    # another family, an inference profile: Nova's messages-v1 answer with its usage
    nova = {"schemaVersion": "messages-v1", "messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
    nova_answer, _ = invoke(client, NOVA, {**nova, "inferenceConfig": {"maxTokens": 20}})
    assert nova_answer["output"]["message"]["content"][0]["text"]
    assert nova_answer["usage"]["inputTokens"] > 0 and nova_answer["usage"]["outputTokens"] > 0


def test_boto3_gets_bedrocks_errors(limits: Any) -> None:
    client = runtime_client(limits)
    with pytest.raises(ClientError) as unknown:
        client.invoke_model(modelId="anthropic.claude-unknown-9", body=json.dumps(claude_body("x")))
    assert unknown.value.response["Error"]["Code"] == "ValidationException"
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as malformed:
        client.invoke_model(modelId=CLAUDE, body=json.dumps({"messages": [{"role": "user", "content": "x"}]}))
    assert malformed.value.response["Error"]["Code"] == "ValidationException"
    assert "anthropic_version" in malformed.value.response["Error"]["Message"]


def test_boto3_is_throttled_per_access_key(limits: Any) -> None:
    emu = limits
    emu.sync_settings(rpm=1, window_seconds=30)
    before = emu.sync_settings()
    first = runtime_client(emu, **new_key())
    invoke(first, CLAUDE, claude_body("one"))
    with pytest.raises(ClientError) as throttled:
        invoke(first, CLAUDE, claude_body("two"))
    response = throttled.value.response
    assert response["Error"]["Code"] == "ThrottlingException"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert int(response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) >= 1
    # another access key has a window of its own
    other = runtime_client(emu, **new_key())
    assert invoke(other, CLAUDE, claude_body("two"))[0]["content"]
    assert counted(emu, before) == (2, 1)
    assert emu.sync_settings()["keys"] == before["keys"] + 2


def part_line(backend: BedrockBackend, custom_id: str, text: str, max_tokens: int = 40) -> bytes:
    return backend.encode(
        LLMRequest(custom_id=custom_id, model=CLAUDE, input=text, max_tokens=max_tokens)
    ).line


async def test_caller_answers_a_row_as_the_job_would(limits: Any) -> None:
    before = limits.sync_settings()
    async with backend_for(limits) as backend:
        caller = sync_caller(backend)
        assert isinstance(caller, BedrockSyncCaller)
        line = part_line(backend, "bp0001", "Sort these tickets")
        row = SyncRow("row-1", "bp0001", line, CLAUDE)
        assert row_tokens(row)[1] == 40  # the ceiling reads modelInput.max_tokens
        record = await caller.call(row)
    model_input = json.loads(line)["modelInput"]
    want = bw.record_of(
        {
            "recordId": "bp0001",
            "modelInput": model_input,
            "modelOutput": model_output("anthropic", CLAUDE, model_input, SEED),
        },
        "sync",
        CLAUDE,
    )
    assert record.status is ItemStatus.SUCCEEDED and record.custom_id == "bp0001"
    assert record.output_text and record.output_text == want.output_text
    assert record.usage == want.usage and record.usage.output_tokens > 0
    assert record.provider == "bedrock" and record.model == CLAUDE and record.batch_id == "sync"
    assert counted(limits, before) == (1, 0)


async def test_caller_raises_a_429_once_as_rate_limited_with_its_wait(limits: Any) -> None:
    emu = limits
    emu.sync_settings(rpm=1, window_seconds=30)
    counts = emu.sync_settings()
    async with own_backend(emu) as backend:
        caller = BedrockSyncCaller(backend)
        await caller.call(SyncRow("a", "bpa", part_line(backend, "bpa", "first"), CLAUDE))
        before = invocations(emu)
        with pytest.raises(RateLimitedError) as limited:
            await caller.call(SyncRow("b", "bpb", part_line(backend, "bpb", "second"), CLAUDE))
    assert limited.value.status_code == 429 and limited.value.retry_after and limited.value.retry_after >= 1
    assert "ThrottlingException" in str(limited.value) and "testing" not in str(limited.value)
    assert invocations(emu) == before + 1  # botocore did not send it again
    assert counted(emu, counts) == (1, 1)


async def test_caller_raises_5xx_and_4xx_without_resending(limits: Any) -> None:
    emu = limits
    emu.set_faults({"rules": [{"match": "POST /model/*", "kind": "503", "times": 1}]})
    counts = emu.sync_settings()
    async with backend_for(emu) as backend:
        caller = BedrockSyncCaller(backend)
        row = SyncRow("a", "bpa", part_line(backend, "bpa", "hello"), CLAUDE)
        before = invocations(emu)
        with pytest.raises(ProviderUnavailableError) as unavailable:
            await caller.call(row)
        assert unavailable.value.status_code == 503 and invocations(emu) == before + 1
        assert (await caller.call(row)).status is ItemStatus.SUCCEEDED  # the runner's next try
        with pytest.raises(InvalidRequestError) as refused:
            await caller.call(SyncRow("u", "bpu", row.line, "anthropic.claude-unknown-9"))
        assert refused.value.status_code == 400 and "ValidationException" in str(refused.value)
    assert counted(emu, counts) == (1, 0)


async def test_a_lost_answer_is_not_sent_again(limits: Any) -> None:
    emu = limits
    emu.set_faults({"rules": [{"match": "POST /model/*", "kind": "reset", "times": 1}]})
    async with backend_for(emu) as backend:
        caller = BedrockSyncCaller(backend)
        before = invocations(emu)
        with pytest.raises(ProviderUnavailableError) as lost:
            await caller.call(SyncRow("a", "bpa", part_line(backend, "bpa", "hello"), CLAUDE))
    assert lost.value.status_code is None  # the runner leaves the row unanswered
    assert invocations(emu) == before + 1


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_boto3_converse_answers_as_a_converse_job_record_would(limits: Any) -> None:
    client = runtime_client(limits)
    request = {
        "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "Name a colour"}]}],
        "inferenceConfig": {"maxTokens": 24},
    }
    answer = client.converse(modelId=CLAUDE, **request)
    want = model_output("converse", CLAUDE, request, SEED)
    assert answer["output"] == want["output"] and answer["stopReason"] == want["stopReason"]
    assert answer["usage"] == want["usage"] and answer["usage"]["outputTokens"] > 0
    assert "latencyMs" in answer["metrics"]


async def test_caller_sends_a_converse_runs_line_to_converse(limits: Any) -> None:
    from batch_provider.core.models import ImagePart, Message, TextPart

    emu = limits
    before = emu.sync_settings(bodies=True)
    async with backend_for(emu, invocation_type="Converse") as backend:
        request = LLMRequest(
            custom_id="bpimg",
            model=CLAUDE,
            messages=[
                Message(
                    role="user",
                    content=[TextPart(text="What is this?"), ImagePart(media_type="image/png", data=PIXEL)],
                )
            ],
            max_tokens=30,
        )
        line = backend.encode(request).line
        row = SyncRow("img", "bpimg", line, CLAUDE)
        assert row_tokens(row)[1] == 30  # the ceiling reads modelInput.inferenceConfig.maxTokens
        record = await sync_caller(backend).call(row)
    model_input = json.loads(line)["modelInput"]
    want = model_output("converse", CLAUDE, model_input, SEED)
    assert record.status is ItemStatus.SUCCEEDED and record.custom_id == "bpimg"
    assert record.output_text == want["output"]["message"]["content"][0]["text"]
    assert record.usage.output_tokens == want["usage"]["outputTokens"] > 0
    # the image reached the emulator as the line has it: the body counted is the line's modelInput
    served = emu.sync_settings(bodies=True)["served_by_body"]
    digest = str(body_hash(0, {"model": CLAUDE, **model_input}))
    assert served.get(digest, 0) == before["served_by_body"].get(digest, 0) + 1


async def test_a_converse_request_botocore_refuses_is_the_rows_failure_without_its_content(
    limits: Any,
) -> None:
    async with backend_for(limits, invocation_type="Converse") as backend:
        line = json.dumps(
            {"recordId": "bpbad", "modelInput": {"messages": [{"role": "user", "content": [{"text": 42}]}]}}
        ).encode()
        before = limits.stats()["requests"].get("POST /model/{model:path}/converse", 0)
        with pytest.raises(InvalidRequestError) as refused:
            await sync_caller(backend).call(SyncRow("bad", "bpbad", line, CLAUDE))
    message = str(refused.value)
    assert "messages[0].content[0].text" in message and "42" not in message.replace("[0]", "")
    assert limits.stats()["requests"].get("POST /model/{model:path}/converse", 0) == before  # never sent


def test_only_a_failed_connect_counts_as_never_sent() -> None:
    from aiohttp import ClientConnectorError, ServerDisconnectedError
    from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError

    refused = ClientConnectorError.__new__(ClientConnectorError)
    assert never_sent(ConnectTimeoutError(endpoint_url="http://x"))
    assert never_sent(EndpointConnectionError(endpoint_url="http://x", error=refused))
    assert not never_sent(EndpointConnectionError(endpoint_url="http://x", error=OSError("reset by peer")))
    assert not never_sent(ConnectionClosedError(endpoint_url="http://x", error=ServerDisconnectedError()))


def test_the_runtime_client_makes_one_attempt_whatever_the_connection_says() -> None:
    from batch_provider.backends.bedrock.aws import RUNTIME

    backend = BedrockBackend(
        role_arn="arn:aws:iam::123456789012:role/r",
        s3_uri="s3://b/p",
        region_name=REGION,
        bedrock_endpoint_url="http://127.0.0.1:9",
    )
    aws = backend._aws
    assert aws.endpoints[RUNTIME] == "http://127.0.0.1:9"  # the emulator serves both
    assert aws._config(RUNTIME).retries == {"mode": "standard", "total_max_attempts": 1}
    assert aws._config("bedrock").retries["total_max_attempts"] == backend.policy.max_attempts
