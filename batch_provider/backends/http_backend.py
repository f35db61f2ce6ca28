"""What every HTTP backend (OpenAI, Anthropic, Gemini) shares: one :class:`Transport`, built the
same way, and its repr and close.

Invariants:
- The transport is named after the backend's ``provider`` and rooted at the given base URL or,
  without one, the class's ``default_base_url``.
- Credentials travel only in ``credential_headers``, which the transport sets on its client and
  scrubs from every error message; the repr shows the base URL alone.
- ``limits`` default to the provider's published limits (:data:`LIMITS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import httpx2

from batch_provider.backends.transport import QuotaCheck, Transport, TransportPolicy
from batch_provider.core.contract import BatchBackend
from batch_provider.core.limits import LIMITS, ProviderLimits


class HttpBatchBackend(BatchBackend):
    """A backend whose calls all go through one pooled :class:`Transport` (``self._http``)."""

    default_base_url: ClassVar[str]

    def __init__(
        self,
        base_url: str | None,
        *,
        credential_headers: Mapping[str, str],
        headers: Mapping[str, str] | None = None,
        policy: TransportPolicy | None = None,
        limits: ProviderLimits | None = None,
        client: httpx2.AsyncClient | None = None,
        quota_exhausted: QuotaCheck | None = None,
    ) -> None:
        self.limits = limits or LIMITS[self.provider]
        self._http = Transport(
            provider=self.provider.value,
            base_url=base_url or self.default_base_url,
            credential_headers=credential_headers,
            headers=headers,
            policy=policy,
            client=client,
            quota_exhausted=quota_exhausted,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._http.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()
