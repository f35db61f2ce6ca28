"""The emulator's Bedrock face driven by boto3's own ``bedrock`` client; outputs read from moto's S3."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from bedrock_support import CLAUDE, INPUT_BUCKET, OUTPUT_BUCKET, ROLE, bedrock_client, s3_client
from botocore.exceptions import ClientError

MINUTE = 60.0


def put_input(emu: Any, count: int, *, prefix: str, bad_ids: tuple[str, ...] = ()) -> str:
    """Write ``count`` Anthropic records (plus ``bad_ids`` records) and return the input URI."""
    lines = [
        {
            "recordId": f"REC{i:07d}",
            "modelInput": {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": [{"type": "text", "text": f"Summarise item {i}"}]}],
            },
        }
        for i in range(count)
    ]
    lines += [
        {
            "recordId": rid,
            "modelInput": {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": []},
        }
        for rid in bad_ids
    ]
    key = f"{prefix}/records.jsonl"
    body = "\n".join(json.dumps(line) for line in lines).encode()
    s3_client(emu).put_object(Bucket=INPUT_BUCKET, Key=key, Body=body)
    return f"s3://{INPUT_BUCKET}/{key}"


def create(client: Any, input_uri: str, prefix: str, **extra: Any) -> str:
    return client.create_model_invocation_job(
        jobName=f"job-{prefix}",
        roleArn=ROLE,
        modelId=CLAUDE,
        inputDataConfig={"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUTPUT_BUCKET}/{prefix}/"}},
        **extra,
    )["jobArn"]


def output_records(emu: Any, prefix: str, arn: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(records of every ``.jsonl.out``, the manifest) under ``<prefix>/<jobId>/``."""
    s3 = s3_client(emu)
    job_id = arn.rsplit("/", 1)[-1]
    listing = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"{prefix}/{job_id}/").get("Contents") or []
    records: list[dict[str, Any]] = []
    manifest = None
    for item in listing:
        body = s3.get_object(Bucket=OUTPUT_BUCKET, Key=item["Key"])["Body"].read()
        if item["Key"].endswith("manifest.json.out"):
            manifest = json.loads(body)
        else:
            assert item["Key"].endswith("records.jsonl.out")
            records.extend(json.loads(line) for line in body.splitlines() if line.strip())
    return records, manifest


def fresh_prefix() -> str:
    return uuid.uuid4().hex[:10]


def test_full_lifecycle_idempotent_create_and_outputs(emu: Any) -> None:
    client = bedrock_client(emu)
    prefix = fresh_prefix()
    uri = put_input(emu, 118, prefix=prefix, bad_ids=("emu-fail500-x", "BADBODY"))
    before = emu.stats()["batches_created"].get("bedrock", 0)
    arn = create(
        client, uri, prefix, clientRequestToken=f"tok-{prefix}", tags=[{"key": "team", "value": "eval"}]
    )
    again = create(client, uri, prefix, clientRequestToken=f"tok-{prefix}")
    assert again == arn, "the same clientRequestToken answers the same job"
    assert emu.stats()["batches_created"].get("bedrock", 0) == before + 1

    job = client.get_model_invocation_job(jobIdentifier=arn)
    assert job["status"] in {"Submitted", "Validating", "Scheduled", "InProgress"}
    assert job["clientRequestToken"] == f"tok-{prefix}"
    assert "endTime" not in job and "message" not in job, "unset members are omitted"
    emu.advance(3 * MINUTE)
    running = client.get_model_invocation_job(jobIdentifier=arn.rsplit("/", 1)[-1])
    assert running["status"] == "InProgress"
    emu.advance(2 * 86400)
    done = client.get_model_invocation_job(jobIdentifier=arn)
    assert done["status"] == "Completed"
    assert (done["totalRecordCount"], done["processedRecordCount"]) == (120, 120)
    assert (done["successRecordCount"], done["errorRecordCount"]) == (118, 2)
    assert done["endTime"] >= done["submitTime"]

    records, manifest = output_records(emu, prefix, arn)
    assert len(records) == 120 and len({r["recordId"] for r in records}) == 120
    errors = {r["recordId"]: r["error"] for r in records if "error" in r}
    assert errors["emu-fail500-x"]["errorCode"] == 500
    assert errors["BADBODY"]["errorCode"] == 400
    ok = next(r for r in records if "modelOutput" in r)
    assert ok["modelInput"]["anthropic_version"] == "bedrock-2023-05-31"
    assert (
        ok["modelOutput"]["content"][0]["type"] == "text" and ok["modelOutput"]["usage"]["output_tokens"] > 0
    )
    assert manifest is not None and manifest["successRecordCount"] == 118 and manifest["inputTokenCount"] > 0

    listed = client.list_model_invocation_jobs(submitTimeAfter=done["submitTime"], nameContains=prefix)
    assert [j["jobArn"] for j in listed["invocationJobSummaries"]] == [arn]
    tags = client.list_tags_for_resource(resourceARN=arn)["tags"]
    assert tags == [{"key": "team", "value": "eval"}]

    with pytest.raises(ClientError) as conflict:
        client.stop_model_invocation_job(jobIdentifier=arn)
    assert conflict.value.response["Error"]["Code"] == "ConflictException"


def test_stop_keeps_partial_output(emu: Any) -> None:
    client = bedrock_client(emu)
    prefix = fresh_prefix()
    arn = create(client, put_input(emu, 200, prefix=prefix), prefix, clientRequestToken=f"tok-{prefix}")
    emu.advance(95 + 800)  # started 95 s in; 1600 s of processing for 200 records: about half done
    assert client.get_model_invocation_job(jobIdentifier=arn)["status"] == "InProgress"
    client.stop_model_invocation_job(jobIdentifier=arn)
    stopping = client.get_model_invocation_job(jobIdentifier=arn)
    assert stopping["status"] in {"Stopping", "Stopped"}
    emu.advance(5 * MINUTE)
    stopped = client.get_model_invocation_job(jobIdentifier=arn)
    assert stopped["status"] == "Stopped"
    assert 0 < stopped["processedRecordCount"] < 200
    records, manifest = output_records(emu, prefix, arn)
    assert len(records) == stopped["processedRecordCount"]
    assert manifest is not None and manifest["processedRecordCount"] == len(records)


def test_timeout_gives_partially_completed_or_expired(emu: Any) -> None:
    client = bedrock_client(emu)
    partial, never = fresh_prefix(), fresh_prefix()
    partial_arn = create(
        client,
        put_input(emu, 100, prefix=partial),
        partial,
        tags=[{"key": "emu_faults", "value": "expire=0.4"}],
    )
    never_arn = create(
        client, put_input(emu, 100, prefix=never), never, tags=[{"key": "emu_faults", "value": "expire=0"}]
    )
    emu.advance(3 * MINUTE)
    assert client.get_model_invocation_job(jobIdentifier=never_arn)["status"] == "Scheduled"
    emu.advance(2 * 86400)
    job = client.get_model_invocation_job(jobIdentifier=partial_arn)
    assert job["status"] == "PartiallyCompleted"
    assert job["processedRecordCount"] == 40 and "100" in job["message"]
    records, manifest = output_records(emu, partial, partial_arn)
    assert len(records) == 40 and manifest is not None
    expired = client.get_model_invocation_job(jobIdentifier=never_arn)
    assert expired["status"] == "Expired" and expired["processedRecordCount"] == 0
    assert output_records(emu, never, never_arn) == ([], None), "an expired job writes no output"


def test_validation_failures_and_minimum_records(emu: Any) -> None:
    client = bedrock_client(emu)
    prefix = fresh_prefix()
    small = create(client, put_input(emu, 99, prefix=prefix), prefix)
    missing = create(client, f"s3://{INPUT_BUCKET}/{prefix}/nothing.jsonl", prefix + "m")
    emu.advance(10 * MINUTE)
    failed = client.get_model_invocation_job(jobIdentifier=small)
    assert failed["status"] == "Failed"
    assert "99" in failed["message"] and "100" in failed["message"]
    assert client.get_model_invocation_job(jobIdentifier=missing)["status"] == "Failed"
    emu.bedrock_settings(min_records=10)
    ten = fresh_prefix()
    accepted = create(client, put_input(emu, 10, prefix=ten), ten)
    emu.advance(2 * 86400)
    assert client.get_model_invocation_job(jobIdentifier=accepted)["status"] == "Completed"

    with pytest.raises(ClientError) as bad:
        client.create_model_invocation_job(
            jobName="-not-a-valid-name",
            roleArn=ROLE,
            modelId=CLAUDE,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{INPUT_BUCKET}/{ten}/records.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUTPUT_BUCKET}/{ten}/"}},
        )
    assert bad.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as unknown:
        client.get_model_invocation_job(jobIdentifier="abcdefabcdef")
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_throttling_internal_errors_and_jobs_in_flight(emu: Any) -> None:
    client = bedrock_client(emu, retries={"mode": "standard", "total_max_attempts": 1})
    prefix = fresh_prefix()
    uri = put_input(emu, 100, prefix=prefix)
    emu.set_faults(
        {
            "rules": [
                {"match": "POST /model-invocation-job", "kind": "429", "times": 1},
                {"match": "GET /model-invocation-jobs", "kind": "500", "times": 1},
            ]
        }
    )
    with pytest.raises(ClientError) as throttled:
        create(client, uri, prefix, clientRequestToken=f"tok-{prefix}")
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    with pytest.raises(ClientError) as internal:
        client.list_model_invocation_jobs()
    assert internal.value.response["Error"]["Code"] == "InternalServerException"

    retrying = bedrock_client(emu, retries={"mode": "standard", "total_max_attempts": 4})
    emu.set_faults({"rules": [{"match": "POST /model-invocation-job", "kind": "drop", "times": 1}]})
    arn = create(retrying, uri, prefix, clientRequestToken=f"tok-{prefix}")
    assert create(retrying, uri, prefix, clientRequestToken=f"tok-{prefix}") == arn
    matching = retrying.list_model_invocation_jobs(nameContains=prefix)["invocationJobSummaries"]
    assert len(matching) == 1, "a create whose answer was lost and then retried made one job"

    emu.clear_faults()
    running = sum(
        1
        for j in retrying.list_model_invocation_jobs()["invocationJobSummaries"]
        if j["status"] in {"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"}
    )
    emu.bedrock_settings(max_jobs_in_flight=running)
    with pytest.raises(ClientError) as quota:
        create(client, uri, prefix + "q")
    assert quota.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
