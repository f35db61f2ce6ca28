"""Fixtures for the Bedrock tests: one emulator with moto's S3 beside it, and its buckets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bedrock_support import INPUT_BUCKET, OUTPUT_BUCKET, s3_client

from batch_provider.emulator.process import EmulatorProcess, running_emulator


@pytest.fixture(scope="session")
def bedrock_emulator() -> Iterator[EmulatorProcess]:
    """One emulator (time factor 60) with moto's S3 for the whole session, buckets created.
    Tests that change Bedrock settings restore them (see ``bedrock_min_records``)."""
    with running_emulator(time_factor=60.0, with_s3=True) as emu:
        s3 = s3_client(emu)
        for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
            s3.create_bucket(Bucket=bucket)
        yield emu


@pytest.fixture
def emu(bedrock_emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The session emulator with no server-wide faults and default Bedrock settings afterwards."""
    yield bedrock_emulator
    bedrock_emulator.clear_faults()
    bedrock_emulator.bedrock_settings(min_records=100, max_jobs_in_flight=20)
