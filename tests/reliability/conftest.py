"""Reliability suite setup: the test directory on ``sys.path`` for its helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def bedrock_emulator():
    """An emulator with moto's S3 beside it (buckets ``rel-in`` and ``rel-out``), for the whole
    session: tests compare counters before and after, and use their own S3 prefixes."""
    from rel_support import s3_client

    from batch_provider.emulator.process import running_emulator

    with running_emulator(time_factor=600.0, with_s3=True) as emu:
        s3 = s3_client(emu)
        for bucket in ("rel-in", "rel-out"):
            s3.create_bucket(Bucket=bucket)
        yield emu
