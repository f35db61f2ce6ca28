"""Provider limits, one row per provider, and the user's lower overrides.

Invariant: a chunk built under :class:`ProviderLimits` is accepted by the provider as far as
counts, bytes and custom_id rules go; a user may lower any limit, never raise it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from batch_provider.core.models import Provider

MB = 1024 * 1024


@dataclass(frozen=True)
class ProviderLimits:
    max_requests_per_batch: int
    max_bytes_per_batch: int
    max_bytes_per_request: int
    custom_id_pattern: re.Pattern[str]
    custom_id_rule: str
    one_model_per_batch: bool
    min_requests_per_batch: int = 1

    def lowered(
        self,
        *,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
    ) -> ProviderLimits:
        """These limits with the user's lower values; a higher value is an error, not ignored."""
        changes: dict[str, int] = {}
        for name, value in (
            ("max_requests_per_batch", max_requests_per_batch),
            ("max_bytes_per_batch", max_bytes_per_batch),
        ):
            if value is None:
                continue
            ceiling = getattr(self, name)
            if not 1 <= value <= ceiling:
                raise ValueError(f"{name}={value} is outside 1..{ceiling}, the provider's own limit")
            changes[name] = value
        return replace(self, **changes)

    def check_custom_id(self, custom_id: str) -> str | None:
        """None when ``custom_id`` is acceptable, else the reason it is not."""
        if not self.custom_id_pattern.fullmatch(custom_id):
            return f"custom_id {custom_id[:80]!r} breaks the rule: {self.custom_id_rule}"
        return None


OPENAI_LIMITS = ProviderLimits(
    max_requests_per_batch=50_000,
    max_bytes_per_batch=200 * MB,
    max_bytes_per_request=200 * MB,
    custom_id_pattern=re.compile(r"[^\n\r]{1,512}", re.S),
    custom_id_rule="1 to 512 characters, no line breaks",
    one_model_per_batch=True,
)

ANTHROPIC_LIMITS = ProviderLimits(
    max_requests_per_batch=100_000,
    max_bytes_per_batch=256 * MB,
    max_bytes_per_request=256 * MB,
    custom_id_pattern=re.compile(r"[a-zA-Z0-9_-]{1,64}"),
    custom_id_rule="1 to 64 characters from a-z, A-Z, 0-9, '_' and '-'",
    one_model_per_batch=False,
)

BEDROCK_LIMITS = ProviderLimits(
    max_requests_per_batch=50_000,
    max_bytes_per_batch=1024 * MB,
    max_bytes_per_request=1024 * MB,
    # Anthropic's rule, so ids move between Anthropic and Bedrock unchanged.
    custom_id_pattern=re.compile(r"[a-zA-Z0-9_-]{1,64}"),
    custom_id_rule="1 to 64 characters from a-z, A-Z, 0-9, '_' and '-'",
    one_model_per_batch=True,
    min_requests_per_batch=100,
)

GEMINI_LIMITS = ProviderLimits(
    # Batch mode documents a 2 GB input file and ~20 MB inline; no request-count limit is
    # documented, so the count cap is this project's assumption.
    max_requests_per_batch=100_000,
    max_bytes_per_batch=2048 * MB,
    max_bytes_per_request=20 * MB,
    custom_id_pattern=re.compile(r"[^\n\r]{1,512}", re.S),
    custom_id_rule="1 to 512 characters, no line breaks",
    one_model_per_batch=True,
)

VERTEX_LIMITS = ProviderLimits(
    # Vertex publishes no per-job cap for Gemini batch prediction ("no predefined quota",
    # docs.cloud.google.com .../batch-prediction-gemini). 1 GB per job is the first-party figure of
    # the embeddings batch page (cloud.google.com .../embeddings/batch-prediction-genai-embeddings);
    # 200,000 requests and 1 GB per job for Gemini are quoted by docs.gmicloud.ai's Vertex guide.
    # Both read 2026-12-02; the lower of each is used. 20 MB per request: the inline-data limit of
    # a Gemini request (assumed, as for the Gemini API).
    max_requests_per_batch=200_000,
    max_bytes_per_batch=1024 * MB,
    max_bytes_per_request=20 * MB,
    # The wire id travels as a GCP label value.
    custom_id_pattern=re.compile(r"[a-z0-9_-]{1,63}"),
    custom_id_rule="1 to 63 characters from a-z, 0-9, '_' and '-' (a Vertex label value)",
    one_model_per_batch=True,
)

LIMITS: dict[Provider, ProviderLimits] = {
    Provider.OPENAI: OPENAI_LIMITS,
    Provider.OPENAI_COMPATIBLE: OPENAI_LIMITS,
    Provider.ANTHROPIC: ANTHROPIC_LIMITS,
    Provider.BEDROCK: BEDROCK_LIMITS,
    Provider.GEMINI: GEMINI_LIMITS,
    Provider.VERTEX: VERTEX_LIMITS,
}
