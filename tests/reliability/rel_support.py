"""Helpers shared by the reliability tests: backends on the emulator with a short retry policy,
input rows, and the run invariant (every row in exactly one of results, dead letter, rejects)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from batch_provider.backends.registry import create_backend
from batch_provider.backends.transport import TransportPolicy
from batch_provider.core.watch import watch_batches

MODELS = {
    "openai": "gpt-6-luna",
    "anthropic": "claude-haiku-4-5",
    "bedrock": "anthropic.claude-haiku-4-5-20251001-v1:0",
}

# Short waits so a fault storm costs seconds, not minutes; enough attempts to ride out 30 % faults.
FAST_POLICY = TransportPolicy(
    connect_timeout=5.0,
    read_timeout=30.0,
    write_timeout=30.0,
    pool_timeout=30.0,
    max_attempts=15,
    backoff_base=0.02,
    backoff_cap=0.3,
    retry_after_ceiling=5.0,
    deadline=120.0,
)


def bedrock_options(emulator: Any, prefix: str, **extra: Any) -> dict[str, Any]:
    """Constructor options of a Bedrock backend on the emulator's Bedrock face and moto S3."""
    return {
        "role_arn": "arn:aws:iam::123456789012:role/BedrockBatchRole",
        "s3_input_uri": f"s3://rel-in/{prefix}",
        "s3_output_uri": f"s3://rel-out/{prefix}",
        "region_name": "us-east-1",
        "bedrock_endpoint_url": emulator.base_url,
        "s3_endpoint_url": emulator.s3_endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        **extra,
    }


def s3_client(emulator: Any) -> Any:
    """A boto3 S3 client on the emulator's moto S3."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=emulator.s3_endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def base_url(provider: str, emulator: Any) -> str:
    return f"{emulator.base_url}/v1" if provider == "openai" else emulator.base_url


def backend_for(provider: str, emulator: Any, *, api_key: str = "test-key", policy: Any = FAST_POLICY):
    return create_backend(provider, api_key=api_key, base_url=base_url(provider, emulator), policy=policy)


def rows(count: int, *, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i:04d}", "text": f"row {i} says " + "word " * (1 + i % 7)} for i in range(count)
    ]


def read_lines(path: Any) -> list[dict[str, Any]]:
    path = Path(str(path).removeprefix("file://"))
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def batches_created(emulator: Any, provider: str) -> int:
    return int(emulator.stats().get("batches_created", {}).get(provider, 0))


def route_counts(emulator: Any) -> dict[str, int]:
    return dict(emulator.stats().get("requests", {}))


async def wait_until_ended(backend: Any, batch_ids: list[str], emulator: Any, *, advance: bool = True) -> Any:
    if advance:
        emulator.advance(2 * 86400)
    return await watch_batches(
        backend, batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.3
    )


def assert_every_row_once(run_dir: Any, input_ids: list[str], *, final: bool) -> dict[str, Any]:
    """Every input id is in exactly one of results, errors (or dead letter when ``final``) and
    rejects; the manifest's counts agree with the files."""
    manifest = json.loads(Path(str(run_dir.manifest)).read_text())
    results = read_lines(run_dir.results)
    unresolved = read_lines(run_dir.dead_letter if final else run_dir.errors)
    rejects = read_lines(run_dir.rejects)
    outcomes = Counter(r["custom_id"] for r in results + unresolved + rejects)
    inputs = Counter(input_ids)  # an id given twice in the input is two rows (one is a reject)
    assert outcomes - inputs == Counter(), f"ids with more outcomes than rows: {outcomes - inputs}"
    assert inputs - outcomes == Counter(), f"rows without an outcome: {inputs - outcomes}"
    sent = [r["custom_id"] for r in results + unresolved]
    assert len(sent) == len(set(sent)), "a sent request has two outcomes"
    assert manifest["inputs"] == len(input_ids)
    assert manifest["succeeded"] == len(results)
    assert manifest["rejected"] == len(rejects)
    assert manifest["unresolved"] == len(unresolved)
    if final:
        assert manifest["dead_letter"] == len(unresolved)
    assert manifest["succeeded"] + manifest["rejected"] + manifest["unresolved"] == manifest["inputs"]
    assert manifest["accounted"] is True
    return manifest
