"""Vertex job records, the emulator's Vertex settings, and a job's state at one instant: the data
the state machine (:mod:`.state`) and the HTTP face (:mod:`.routes`) share. No behaviour of their
own (settings updates come from :class:`..settings.FaceSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..settings import FaceSettings

TERMINAL = frozenset(
    {
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_PARTIALLY_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
    }
)
WITH_OUTPUT = TERMINAL - {"JOB_STATE_FAILED"}


@dataclass
class VertexSettings(FaceSettings):
    """Vertex knobs; change them at run time with ``POST /_emu/vertex``."""

    FACE = "vertex"
    KEEP = ("gcs_endpoint",)

    gcs_endpoint: str | None = None
    queued_seconds: float = 0.0
    """JOB_STATE_QUEUED before validation starts."""
    expire_seconds: float = 72 * 3600.0
    """A job not done by then expires (Vertex: jobs may stay queued up to 72 h)."""
    max_requests: int = 200_000
    max_input_bytes: int = 1024**3
    lines_per_file: int = 100_000
    display_name_max: int = 128
    partial_state: bool = True
    """A job with failed rows ends PARTIALLY_SUCCEEDED (false: SUCCEEDED, the rows' status tells)."""


@dataclass
class VertexJob:
    id: str
    project: str
    location: str
    display_name: str
    model: str
    input_uris: list[str]
    output_prefix: str
    output_dir: str
    labels: dict[str, str]
    created_at: float
    seq: int
    faults: dict[str, Any]
    n: int = 0
    fail_message: str | None = None
    cancel_at: float | None = None
    written: list[str] = field(default_factory=list)
    outputs_written: bool = False

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def name(self) -> str:
        return f"{self.parent}/batchPredictionJobs/{self.id}"


@dataclass
class View:
    state: str
    done: int
    ended_at: float | None
