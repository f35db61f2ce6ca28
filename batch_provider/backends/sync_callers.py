"""The synchronous caller of a backend, for a sync fallback (see
:mod:`batch_provider.core.sync_fallback`): OpenAI (and OpenAI-compatible), Anthropic, Gemini,
Vertex AI, AWS Bedrock (Bedrock Runtime ``InvokeModel``, or ``Converse`` for runs with
``invocation_type="Converse"``)."""

from __future__ import annotations

from batch_provider.core.contract import BatchBackend
from batch_provider.core.models import Provider
from batch_provider.core.sync_fallback import SyncCaller

SYNC_PROVIDERS = (
    Provider.OPENAI,
    Provider.OPENAI_COMPATIBLE,
    Provider.ANTHROPIC,
    Provider.GEMINI,
    Provider.VERTEX,
    Provider.BEDROCK,
)


def sync_caller(backend: BatchBackend) -> SyncCaller:
    """The backend's synchronous caller; ``ValueError`` for a provider without one."""
    if backend.provider in (Provider.OPENAI, Provider.OPENAI_COMPATIBLE):
        from batch_provider.backends.openai.sync import OpenAISyncCaller

        return OpenAISyncCaller(backend)  # type: ignore[arg-type]
    if backend.provider is Provider.ANTHROPIC:
        from batch_provider.backends.anthropic.sync import AnthropicSyncCaller

        return AnthropicSyncCaller(backend)  # type: ignore[arg-type]
    if backend.provider is Provider.GEMINI:
        from batch_provider.backends.gemini.sync import GeminiSyncCaller

        return GeminiSyncCaller(backend)  # type: ignore[arg-type]
    if backend.provider is Provider.VERTEX:
        from batch_provider.backends.vertex.sync import VertexSyncCaller

        return VertexSyncCaller(backend)  # type: ignore[arg-type]
    if backend.provider is Provider.BEDROCK:
        from batch_provider.backends.bedrock.sync import BedrockSyncCaller

        return BedrockSyncCaller(backend)  # type: ignore[arg-type]
    raise ValueError(
        f"sync_fallback_at: {backend.provider.value} has no synchronous fallback; "
        f"use one of {', '.join(p.value for p in SYNC_PROVIDERS)}"
    )
