"""Build a backend for a provider name. The only place that maps names to backend classes."""

from __future__ import annotations

from typing import Any

from batch_provider.core.contract import BatchBackend
from batch_provider.core.models import Provider

_BACKENDS: dict[Provider, str] = {
    Provider.OPENAI: "batch_provider.backends.openai.backend:OpenAIBackend",
    Provider.OPENAI_COMPATIBLE: "batch_provider.backends.openai.backend:OpenAICompatibleBackend",
    Provider.ANTHROPIC: "batch_provider.backends.anthropic.backend:AnthropicBackend",
    Provider.BEDROCK: "batch_provider.backends.bedrock.backend:BedrockBackend",
    Provider.GEMINI: "batch_provider.backends.gemini.backend:GeminiBackend",
}


def create_backend(provider: Provider | str, **options: Any) -> BatchBackend:
    """A backend for ``provider``; ``options`` go to its constructor (``api_key``, ``base_url``, …).

    Raises ``ValueError`` naming the known providers when ``provider`` is not one of them.
    """
    try:
        key = Provider(provider)
        target = _BACKENDS[key]
    except (ValueError, KeyError):
        known = ", ".join(p.value for p in _BACKENDS)
        raise ValueError(f"unknown provider {provider!r}; known providers: {known}") from None
    module_name, _, class_name = target.partition(":")
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)(**options)
