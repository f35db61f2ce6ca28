"""Hooks that turn an Airflow connection into a :class:`BatchBackend`.

Invariants:
- The API key is read from the connection's password at the moment a backend is built and goes
  only to the backend's constructor: it is never logged, stored on the hook, pushed to XCom or
  put into trigger kwargs.
- ``host`` is the base URL (empty: the provider's public API); ``password`` is the key.
- Bedrock is the exception: it uses a plain amazon-provider ``aws`` connection (credentials,
  region, endpoints read by ``AwsBaseHook``) plus ``bedrock_*`` extras; no key passes through here.
- ``get_backend`` is for workers; ``aget_backend`` is for triggers and other async code, where a
  blocking connection lookup would stall the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from airflow.sdk import BaseHook

from batch_provider.backends.bedrock.connection import bedrock_options
from batch_provider.backends.registry import create_backend
from batch_provider.core.contract import BatchBackend
from batch_provider.core.models import Provider
from batch_provider.core.poller import POLL_POLICY, PollerLease, acquire_poller, pool_key, resolve_once

CONN_TYPE_PROVIDER: dict[str, Provider] = {
    "llm_openai": Provider.OPENAI,
    "llm_openai_compatible": Provider.OPENAI_COMPATIBLE,
    "llm_anthropic": Provider.ANTHROPIC,
    "llm_gemini": Provider.GEMINI,
    "aws": Provider.BEDROCK,
}

DEFAULT_CONN_IDS: dict[Provider, str] = {
    Provider.OPENAI: "llm_openai_default",
    Provider.OPENAI_COMPATIBLE: "llm_openai_compatible_default",
    Provider.ANTHROPIC: "llm_anthropic_default",
    Provider.GEMINI: "llm_gemini_default",
    Provider.BEDROCK: "aws_default",
}


EXTRA_OPTIONS: dict[Provider, tuple[str, ...]] = {
    Provider.OPENAI: ("organization", "project"),
    Provider.OPENAI_COMPATIBLE: ("organization", "project"),
    Provider.ANTHROPIC: ("anthropic_version",),
    Provider.GEMINI: ("api_version", "inline_max_bytes"),
}
"""Connection extras (the form's ``conn-fields``) passed to each backend's constructor."""


class MissingApiKeyError(ValueError):
    """The connection has no API key; the message names the connection, never a value."""


def provider_of(name: Provider | str) -> Provider:
    """``name`` as a Provider; a ValueError naming the known providers when it is not one."""
    try:
        return Provider(name)
    except ValueError:
        known = ", ".join(p.value for p in Provider)
        raise ValueError(f"unknown provider {name!r}; known providers: {known}") from None


class LLMBatchHook(BaseHook):
    """Builds the backend for one connection.

    :param conn_id: Airflow connection id. Default: the provider's default connection
        (``llm_openai_default``, ``llm_openai_compatible_default``, ``llm_anthropic_default``,
        ``llm_gemini_default``, ``aws_default`` for Bedrock).
    :param provider: ``openai``, ``openai_compatible``, ``anthropic``, ``gemini`` or ``bedrock``.
        Default: derived from the connection type (``aws`` is Bedrock), then from the
        connection's ``provider`` extra.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "llm_openai_default"
    conn_type = "llm_openai"
    hook_name = "LLM Batch API"
    provider: ClassVar[Provider | None] = None

    def __init__(self, conn_id: str | None = None, provider: Provider | str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        explicit = provider_of(provider) if provider else None
        self._explicit_provider = explicit or type(self).provider
        default_for = self._explicit_provider or Provider.OPENAI
        self.conn_id = conn_id or DEFAULT_CONN_IDS.get(default_for, type(self).default_conn_name)

    def _provider_for(self, conn: Any) -> Provider:
        if self._explicit_provider is not None:
            return self._explicit_provider
        if conn.conn_type in CONN_TYPE_PROVIDER:
            return CONN_TYPE_PROVIDER[conn.conn_type]
        extra = conn.extra_dejson or {}
        if extra.get("provider"):
            return provider_of(extra["provider"])
        raise ValueError(
            f"connection {self.conn_id!r} (type {conn.conn_type!r}) does not say which provider it is "
            "for: pass provider=..., use an llm_openai / llm_openai_compatible / llm_anthropic / "
            "llm_gemini or aws connection, or set the 'provider' extra"
        )

    def _options(self, conn: Any) -> tuple[Provider, dict[str, Any]]:
        provider = self._provider_for(conn)
        if provider is Provider.BEDROCK:
            # Pure: reads extras only; AwsBaseHook resolves credentials lazily inside the backend.
            return provider, bedrock_options(self.conn_id, conn.extra_dejson or {})
        if not conn.password:
            raise MissingApiKeyError(
                f"connection {self.conn_id!r} has no API key: set its password (shown as 'API Key' "
                "in the connection form) or AIRFLOW_CONN_" + self.conn_id.upper() + "'s password"
            )
        options: dict[str, Any] = {"api_key": conn.password}
        extra = conn.extra_dejson or {}
        for name in EXTRA_OPTIONS.get(provider, ()):
            value = extra.get(name) or extra.get(f"extra__{conn.conn_type}__{name}")
            if value:
                options[name] = value
        base_url = base_url_of(conn)
        if base_url:
            options["base_url"] = base_url
        elif provider is Provider.OPENAI_COMPATIBLE:
            raise ValueError(
                f"connection {self.conn_id!r} is for an OpenAI-compatible service but has no base URL: "
                "set its host to the service's API root, e.g. https://api.example.com/v1"
            )
        return provider, options

    def get_provider(self) -> Provider:
        return self._provider_for(self.get_connection(self.conn_id))

    def get_base_url(self) -> str | None:
        """The connection's base URL for links; None for Bedrock (links come from the job ARN)."""
        conn = self.get_connection(self.conn_id)
        if self._provider_for(conn) is Provider.BEDROCK:
            return None
        return base_url_of(conn)

    def get_backend(self) -> BatchBackend:
        """A new backend for this connection; the caller closes it (``async with``/``aclose``)."""
        provider, options = self._options(self.get_connection(self.conn_id))
        return create_backend(provider, **options)

    async def aget_backend(self) -> BatchBackend:
        """Async twin of :meth:`get_backend`, for triggers."""
        provider, options = self._options(await self.aget_connection(self.conn_id))
        if provider is Provider.BEDROCK:
            # The first build imports aiobotocore and the amazon provider: keep it off the loop.
            return await asyncio.to_thread(create_backend, provider, **options)
        return create_backend(provider, **options)

    async def apoller(self) -> PollerLease:
        """A lease on this process's shared poller for this connection's endpoint and key (see
        :mod:`batch_provider.core.poller`); the caller releases it. Status calls of every trigger
        on the same provider, base URL and credentials go through one HTTP pool. The connection
        is looked up once a minute per process, however many triggers start."""
        async def resolve() -> tuple[Provider, dict[str, Any]]:
            return self._options(await self.aget_connection(self.conn_id))

        key = ("connection", self.conn_id, self._explicit_provider)
        provider, resolved = await resolve_once(key, resolve)
        options = dict(resolved)
        if provider is not Provider.BEDROCK:
            options["policy"] = POLL_POLICY

        async def build() -> BatchBackend:
            if provider is Provider.BEDROCK:
                return await asyncio.to_thread(create_backend, provider, **options)
            return create_backend(provider, **options)

        return await acquire_poller(pool_key(provider.value, options), build)

    def get_conn(self) -> BatchBackend:
        return self.get_backend()

    def test_connection(self) -> tuple[bool, str]:
        try:
            self._options(self.get_connection(self.conn_id))
        except Exception as exc:
            return False, str(exc)
        if self.get_provider() is Provider.BEDROCK:
            return True, "aws connection has the Bedrock role and S3 location extras"
        return True, "connection has an API key and a usable base URL"


class OpenAIBatchHook(LLMBatchHook):
    """Connection type ``llm_openai``: the OpenAI Batch API."""

    default_conn_name = "llm_openai_default"
    conn_type = "llm_openai"
    hook_name = "OpenAI Batch API"
    provider = Provider.OPENAI


class OpenAICompatibleBatchHook(LLMBatchHook):
    """Connection type ``llm_openai_compatible``: a service speaking the OpenAI Batch API at its
    own base URL (the host field)."""

    default_conn_name = "llm_openai_compatible_default"
    conn_type = "llm_openai_compatible"
    hook_name = "OpenAI-compatible Batch API"
    provider = Provider.OPENAI_COMPATIBLE


class AnthropicBatchHook(LLMBatchHook):
    """Connection type ``llm_anthropic``: the Anthropic Message Batches API."""

    default_conn_name = "llm_anthropic_default"
    conn_type = "llm_anthropic"
    hook_name = "Anthropic Message Batches API"
    provider = Provider.ANTHROPIC


class GeminiBatchHook(LLMBatchHook):
    """Connection type ``llm_gemini``: the Gemini Batch API (key in the password, optional base
    URL in the host, ``api_version`` and ``inline_max_bytes`` extras)."""

    default_conn_name = "llm_gemini_default"
    conn_type = "llm_gemini"
    hook_name = "Gemini Batch API"
    provider = Provider.GEMINI


def base_url_of(conn: Any) -> str | None:
    """The connection's base URL: its host, with scheme and port when given separately."""
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" not in host:
        # URI-style connections split the URL: host, port, and the path in ``schema``.
        scheme = "http" if host in ("localhost", "127.0.0.1") else "https"
        host = f"{scheme}://{host}"
        if conn.port:
            host = f"{host}:{conn.port}"
        if conn.schema:
            host = f"{host}/{conn.schema.strip('/')}"
    return host.rstrip("/")


def hook_for(provider: Provider | str | None, conn_id: str | None) -> LLMBatchHook:
    """The hook for an operator's ``provider`` / ``conn_id`` pair (either may be omitted, not both
    when the connection type does not tell the provider)."""
    return LLMBatchHook(conn_id=conn_id, provider=provider)
