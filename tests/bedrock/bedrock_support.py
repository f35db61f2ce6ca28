"""Constants and client builders shared by the Bedrock tests."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
from botocore.config import Config

from batch_provider.backends.bedrock.backend import BedrockBackend
from batch_provider.emulator.process import EmulatorProcess

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
INPUT_BUCKET = "bp-in"
OUTPUT_BUCKET = "bp-out"
CLAUDE = "anthropic.claude-haiku-4-5-20251001-v1:0"


def s3_client(emu: EmulatorProcess) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=emu.s3_endpoint,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
        **KEYS,
    )


def bedrock_client(emu: EmulatorProcess, **config: Any) -> Any:
    return boto3.client(
        "bedrock", endpoint_url=emu.base_url, region_name=REGION, config=Config(**config), **KEYS
    )


def backend_for(emu: EmulatorProcess, **options: Any) -> BedrockBackend:
    prefix = uuid.uuid4().hex[:8]
    options.setdefault("s3_input_uri", f"s3://{INPUT_BUCKET}/{prefix}")
    options.setdefault("s3_output_uri", f"s3://{OUTPUT_BUCKET}/{prefix}")
    return BedrockBackend(
        role_arn=ROLE,
        region_name=REGION,
        bedrock_endpoint_url=emu.base_url,
        s3_endpoint_url=emu.s3_endpoint,
        **KEYS,
        **options,
    )
