"""``model_id="google:<model>"`` (pydantic-ai's prefix for the Gemini API) or ``"gemini:<model>"``
on an ``llm_gemini`` or ``pydanticai`` connection: the key in the password, the base URL in the
host (empty: Google's public endpoint)."""

from __future__ import annotations

from typing import Any, ClassVar

from batch_provider.core.limits import GEMINI_LIMITS
from batch_provider.core.models import Provider
from batch_provider.integrations.common_ai.adapter import BackendBatchAdapter


class GeminiBatchAdapter(BackendBatchAdapter):
    """Gemini batch mode. Only the key and base URL common-ai passes are used: connection extras
    (``api_version``, ``inline_max_bytes``) keep their defaults."""

    name = "google"
    provider: ClassVar[Provider] = Provider.GEMINI
    conn_types = frozenset({"llm_gemini", "pydanticai"})
    limits = GEMINI_LIMITS
    max_requests = GEMINI_LIMITS.max_requests_per_batch
    max_payload_bytes = GEMINI_LIMITS.max_bytes_per_batch

    def backend_options(self, conn_id: str | None, conn: Any | None) -> dict[str, Any]:
        if not self._api_key:
            raise ValueError(
                "the Gemini batch adapter needs an API key: set the connection's password to the Gemini key"
            )
        options: dict[str, Any] = {"api_key": self._api_key}
        if self._base_url:
            # the backend adds the API version itself; a host written with it would double it
            options["base_url"] = self._base_url.removesuffix("/v1beta").removesuffix("/v1")
        return options


class GeminiAliasBatchAdapter(GeminiBatchAdapter):
    """The same adapter under this provider's own name, ``model_id="gemini:<model>"``."""

    name = "gemini"
