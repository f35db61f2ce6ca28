"""Google credentials for the Vertex backend, behind the optional ``[vertex]`` extra.

Invariants:
- Credentials come from a service-account key given as JSON (the connection's secret field) or,
  when none is given, from Application Default Credentials; anonymous credentials exist only for
  an emulator (``anonymous=True``): they send the fixed bearer :data:`ANONYMOUS_TOKEN` (an
  emulator wants some bearer; Google answers it 401) and read GCS anonymously.
- The access token lives only in the credentials object and in the ``Authorization`` header set on
  each outgoing request by :class:`BearerAuth`; it is never logged or stored elsewhere.
- Refreshing is blocking (google-auth's ``requests`` transport), so it runs in a worker thread
  (``asyncio.to_thread``), once at a time, when the token is missing or expires within
  :data:`REFRESH_MARGIN`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = timedelta(minutes=5)
EXTRA_HINT = "pip install 'airflow-provider-llm-batch[vertex]'"
ANONYMOUS_TOKEN = "anonymous"


class MissingVertexExtraError(ImportError):
    """google-auth or gcsfs is not installed; the message names the extra that brings them."""


def require(module: str) -> Any:
    """Import ``module`` from the ``[vertex]`` extra, or fail naming the extra."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MissingVertexExtraError(
            f"the Vertex backend needs {module.split('.')[0]} (not installed): {EXTRA_HINT}"
        ) from exc


def load_credentials(
    service_account_json: str | Mapping[str, Any] | None = None, *, anonymous: bool = False
) -> tuple[Any, str | None]:
    """(credentials, project named by them) from a key's JSON, or ADC when ``service_account_json``
    is empty. A key that is not JSON fails without echoing any of it."""
    if anonymous:
        credentials = require("google.auth.credentials")
        return credentials.AnonymousCredentials(), None
    if service_account_json:
        service_account = require("google.oauth2.service_account")
        info = service_account_json
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                raise ValueError(
                    "the Vertex service-account key is not valid JSON: paste the whole key file"
                ) from None
        if not isinstance(info, Mapping):
            raise ValueError("the Vertex service-account key must be a JSON object (a key file)")
        creds = service_account.Credentials.from_service_account_info(dict(info), scopes=list(SCOPES))
        return creds, info.get("project_id")
    auth = require("google.auth")
    creds, project = auth.default(scopes=list(SCOPES))
    return creds, project


def _needs_refresh(credentials: Any) -> bool:
    if not getattr(credentials, "token", None):
        return True
    expiry = getattr(credentials, "expiry", None)
    if expiry is None:
        return False
    # google-auth keeps ``expiry`` as a naive UTC datetime.
    expiry = expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)
    return expiry - REFRESH_MARGIN <= datetime.now(UTC)


def _refresh(credentials: Any) -> None:
    transport = require("google.auth.transport.requests")
    credentials.refresh(transport.Request())


class BearerAuth(httpx2.Auth):
    """Sets ``Authorization: Bearer <token>`` on each request, refreshing the token off the event
    loop first when needed; anonymous credentials send :data:`ANONYMOUS_TOKEN`."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials
        self.anonymous = type(credentials).__name__ == "AnonymousCredentials"
        self._lock: asyncio.Lock | None = None

    async def token(self) -> str:
        if self.anonymous:
            return ANONYMOUS_TOKEN
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if _needs_refresh(self.credentials):
                await asyncio.to_thread(_refresh, self.credentials)
        return str(self.credentials.token)

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, Any]:
        request.headers["authorization"] = f"Bearer {await self.token()}"
        yield request

    def __repr__(self) -> str:
        return f"BearerAuth({type(self.credentials).__name__})"
