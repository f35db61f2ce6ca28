"""Fixtures for the Vertex tests: one emulator with a GCS emulator beside it, its buckets, and a
gcsfs filesystem on that GCS.

gcsfs 2026.x's default ``gcsfs.GCSFileSystem`` first asks a gRPC storage-control service for each
bucket's layout (which no local emulator serves) and waits a minute per bucket; tests select the
JSON-API filesystem before gcsfs is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from collections.abc import Iterator
from typing import Any

import pytest
from vertex_emu_support import INPUT_BUCKET, OUTPUT_BUCKET

from batch_provider.emulator.gcs import GcsAccess
from batch_provider.emulator.process import EmulatorProcess, running_emulator

DEFAULT_SETTINGS = {
    "queued_seconds": 0.0,
    "expire_seconds": 72 * 3600.0,
    "lines_per_file": 100_000,
    "partial_state": True,
    "max_requests": 200_000,
}


def local_gcsfs(endpoint: str) -> Any:
    """A gcsfs filesystem on the GCS emulator at ``endpoint``: no credentials, JSON API only."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(endpoint_url=endpoint, token="anon", project="emulator", skip_instance_cache=True)


def create_buckets(endpoint: str, *buckets: str) -> None:
    gcs = GcsAccess(endpoint)
    try:
        for bucket in buckets:
            gcs.create_bucket(bucket)
    finally:
        gcs.close()


@pytest.fixture(scope="session")
def vertex_emulator() -> Iterator[EmulatorProcess]:
    """One emulator (time factor 600) with a GCS emulator on loopback for the whole session, the
    input and output buckets created. Tests that change Vertex settings go through ``vertex_emu``."""
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        create_buckets(str(emu.gcs_endpoint), INPUT_BUCKET, OUTPUT_BUCKET)
        yield emu


@pytest.fixture
def vertex_emu(vertex_emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The session emulator; server-wide faults and Vertex settings are restored afterwards."""
    yield vertex_emulator
    vertex_emulator.clear_faults()
    vertex_emulator.vertex_settings(**DEFAULT_SETTINGS)


@pytest.fixture
def gcs(vertex_emulator: EmulatorProcess) -> Any:
    """A gcsfs filesystem on the emulator's GCS (no credentials)."""
    return local_gcsfs(str(vertex_emulator.gcs_endpoint))
