"""The emulator's Bedrock face refuses a job for a model id Bedrock does not serve."""

from __future__ import annotations

from typing import Any

import pytest
from bedrock_support import INPUT_BUCKET, OUTPUT_BUCKET, ROLE, bedrock_client
from botocore.exceptions import ClientError


def create(client: Any, model_id: str, name: str) -> dict[str, Any]:
    return client.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE,
        modelId=model_id,
        inputDataConfig={"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": f"s3://{INPUT_BUCKET}/x.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUTPUT_BUCKET}/models/"}},
    )


def test_unknown_model_id_is_a_validation_exception(emu: Any) -> None:
    client = bedrock_client(emu)
    before = int(emu.stats()["batches_created"].get("bedrock", 0))
    with pytest.raises(ClientError) as refused:
        create(client, "anthropic.claude-haiku-4.5-v1:0", "models-typo")
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert error["Message"] == "The provided model identifier is invalid."
    assert int(emu.stats()["batches_created"].get("bedrock", 0)) == before
