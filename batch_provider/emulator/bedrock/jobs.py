"""Bedrock job records, the emulator's Bedrock settings, and a job's state at one instant: the data
the state machine (:mod:`.state`), the S3 side (:mod:`.s3`) and the output writer (:mod:`.outputs`)
share. No behaviour of their own (settings updates come from :class:`..settings.FaceSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..settings import FaceSettings

RUNNING = frozenset({"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"})
TERMINAL = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})
WITH_OUTPUT = frozenset({"Completed", "PartiallyCompleted", "Stopped"})


@dataclass
class BedrockSettings(FaceSettings):
    """Bedrock knobs; change them at run time with ``POST /_emu/bedrock`` (``/_emu/reset`` keeps
    the S3 endpoint)."""

    FACE = "bedrock"
    KEEP = ("s3_endpoint",)

    s3_endpoint: str | None = None
    min_records: int = 100
    max_records: int = 50_000
    max_file_bytes: int = 1024**3
    max_job_bytes: int = 5 * 1024**3
    max_jobs_in_flight: int = 20
    submitted_seconds: float = 5.0
    scheduled_seconds: float = 60.0
    account_id: str = "123456789012"
    region: str = "us-east-1"
    require_authorization: bool = False
    """Unsigned requests are accepted by default; True demands an Authorization
    header (any SigV4 signature or bearer key is accepted, never verified)."""


@dataclass
class BedrockJob:
    job_id: str
    job_arn: str
    name: str
    model_id: str
    role_arn: str
    token: str | None
    input_uri: str
    output_uri: str
    timeout_hours: int
    invocation_type: str
    tags: list[dict[str, str]]
    submit_time: float
    seq: int
    n: int = 0
    files: list[list[Any]] = field(default_factory=list)
    """[input file name, record count] in input order."""
    faults: dict[str, Any] = field(default_factory=dict)
    fail_message: str | None = None
    stop_at: float | None = None
    outputs_written: bool = False

    @property
    def id(self) -> str:
        """The job's key in its registry: ``job_id`` (not persisted twice)."""
        return self.job_id

    @property
    def expires_at(self) -> float:
        return self.submit_time + self.timeout_hours * 3600.0


@dataclass
class JobView:
    """A job's state at one instant."""

    status: str
    done: int
    errors: int
    end_time: float | None
    changed_at: float
