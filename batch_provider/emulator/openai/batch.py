"""The record of one OpenAI batch, as the emulator persists it: what the create request fixed and
the few facts that change later (cancel time, downloads, when its output files were written).
Status, counts and usage are derived from it and the clock (:mod:`.state`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class OpenAIBatch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    expires_at: float
    faults: dict[str, Any]
    output_ttl: float
    cancel_at: float | None = None
    input_missing: bool = False
    seq: int = 0
    downloads: int = 0
    synthetic_text_bytes: int | None = None
    """Set for ``/_emu/synthetic`` batches: completed at once, output generated on the fly."""
    synthetic_n: int = 0
    outputs_ready_at: float | None = None
    """With ``outputs_at_finalize``: when its output and error files were written (emulated time)."""
