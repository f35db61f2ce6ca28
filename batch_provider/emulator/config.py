"""Emulator configuration: what the services leave open, and what tests steer.

Times are in *emulated* seconds unless a name says otherwise; the clock's ``time_factor`` maps
them to real time. Every field can be set from the command line, either through its own flag or
through ``--set name=value`` (see :func:`EmulatorConfig.apply_overrides`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: str | None = None
    """Where state and file contents live. ``None``: a temporary directory removed at exit."""
    seed: int = 0
    time_factor: float = 1.0
    """Emulated seconds per real second (3600: an emulated hour passes in a real second)."""

    # --- durations (emulated seconds) ---
    validating_seconds: float = 30.0
    processing_seconds: float = 1200.0
    """Base processing time of a batch; each request adds ``per_request_seconds``."""
    per_request_seconds: float = 0.5
    finalizing_seconds: float = 60.0
    cancel_seconds: float = 60.0
    """OpenAI ``cancelling`` → ``cancelled`` and Anthropic ``canceling`` → ``ended`` delay (spec: ≤600)."""
    completion_window_seconds: float = 86400.0
    file_ttl_seconds: float = 30 * 86400.0
    anthropic_archive_seconds: float = 29 * 86400.0
    expire_done_fraction: float = 0.5
    """Under the ``expire`` fault, the fraction of requests finished when the window ends."""

    # --- limits ---
    openai_max_requests: int = 50_000
    openai_max_file_bytes: int = 200 * 1024 * 1024
    openai_max_upload_bytes: int = 512 * 1024 * 1024
    openai_max_embedding_inputs: int = 50_000
    openai_metadata_max_pairs: int = 16
    openai_metadata_max_key: int = 64
    openai_metadata_max_value: int = 512
    custom_id_max_len: int = 512
    anthropic_max_requests: int = 100_000
    anthropic_max_body_bytes: int = 256 * 1024 * 1024

    # --- behaviour the services leave open ---
    expired_unrun_count_failed: bool = False
    """Count unrun requests of an expired OpenAI batch in ``request_counts.failed``."""
    cancelled_unrun_error_lines: bool = False
    """Write ``batch_cancelled`` lines for unrun requests of a cancelled OpenAI batch."""
    shuffle_results: bool = False
    """Shuffle every output file / results stream (the ``shuffle`` fault does it per batch)."""
    anthropic_results_shuffled: bool = True
    """Anthropic results come in a deterministic shuffled order by default (no order
    is guaranteed); false serves them in request order unless a shuffle fault asks otherwise."""
    outputs_at_finalize: bool = False
    """OpenAI: write a batch's output/error files in the background as soon as its processing is
    over, reporting ``finalizing`` until both are written (false: write them on their first read)."""
    embedding_dim: int = 1536
    organization: str = "org-emulator"
    known_models: list[str] = field(default_factory=lambda: ["catalog"])
    """Model ids served (see models.py): ``catalog``, ``*`` (any), or exact ids; others are refused."""

    # --- server-wide faults (see faults.py for the grammar) ---
    fault_rate: float = 0.0
    fault_kinds: list[str] = field(default_factory=lambda: ["429", "500", "503", "529", "drop"])
    retry_after: float = 1.0
    batch_faults: str = ""
    item_recovery: float = 0.8
    """Chance that a request sent again after a transient item error (429/5xx) succeeds."""
    faults_json: str | None = None

    # --- serving ---
    log_level: str = "warning"
    access_log: bool = False
    port_file: str | None = None

    def apply_overrides(self, items: list[str]) -> None:
        """Apply ``name=value`` strings, converting the value to the field's type."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for item in items:
            name, sep, raw = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in fields:
                raise ValueError(f"unknown setting {item!r}; known: {', '.join(sorted(fields))}")
            setattr(self, name, _convert(getattr(self, name), raw.strip()))

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(current: Any, raw: str) -> Any:
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        return int(float(raw))
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, list):
        return [x.strip() for x in raw.split(",") if x.strip()]
    return raw if raw.lower() not in ("none", "null") else None
