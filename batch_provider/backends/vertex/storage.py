"""Cloud Storage for the Vertex backend: upload a part file, find and read prediction files,
delete staged inputs. gcsfs (``[vertex]`` extra) under the hood, its blocking calls in threads.

Invariants:
- Every call runs in a worker thread (``asyncio.to_thread``): gcsfs' sync API must not block the
  event loop of a trigger.
- One :class:`GcsStore` holds one ``GCSFileSystem`` of its own (no fsspec instance cache shared with
  other credentials) and never caches listings, so a results listing sees what the job wrote.
- Object paths are ``gs://bucket/key`` URIs in and out.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

from batch_provider.backends.vertex.auth import require

READ_BLOCK = 1 << 20


def join(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


def check_uri(uri: str, what: str) -> str:
    if not uri.startswith("gs://") or len(uri) <= len("gs://") or uri[5] == "/":
        raise ValueError(f"{what} must be a gs://bucket/prefix URI, got {uri!r}")
    return uri.rstrip("/")


class GcsStore:
    """gcsfs with the backend's credentials (``"anon"`` against an emulator)."""

    def __init__(self, *, credentials: Any, project: str | None, endpoint_url: str | None = None) -> None:
        self._options: dict[str, Any] = {
            "project": project,
            "token": "anon" if type(credentials).__name__ == "AnonymousCredentials" else credentials,
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }
        if endpoint_url:
            self._options["endpoint_url"] = endpoint_url.rstrip("/")
        self._fs: Any = None

    def _filesystem(self) -> Any:
        if self._fs is None:
            # The JSON-API filesystem: gcsfs' default class first asks a gRPC storage-control
            # service for each bucket's layout, which emulators do not serve.
            core = require("gcsfs.core")
            self._fs = core.GCSFileSystem(**self._options)
        return self._fs

    async def upload(self, source: Any, uri: str) -> None:
        """Copy the local or object-storage file ``source`` to ``uri`` (an overwrite is harmless:
        the same chunk always has the same bytes)."""

        def copy() -> None:
            with source.open("rb") as src, self._filesystem().open(uri, "wb") as dst:
                shutil.copyfileobj(src, dst, READ_BLOCK)

        await asyncio.to_thread(copy)

    async def glob(self, pattern: str) -> list[str]:
        found = await asyncio.to_thread(self._filesystem().glob, pattern)
        return sorted(f"gs://{path}" for path in found)

    async def lines(self, uri: str) -> AsyncIterator[bytes]:
        """The non-empty lines of an object, read a block at a time."""
        handle = await asyncio.to_thread(self._filesystem().open, uri, "rb")
        try:
            carry = b""
            while True:
                block = await asyncio.to_thread(handle.read, READ_BLOCK)
                if not block:
                    break
                parts = (carry + block).split(b"\n")
                carry = parts.pop()
                for line in parts:
                    if line.strip():
                        yield line
            if carry.strip():
                yield carry
        finally:
            await asyncio.to_thread(handle.close)

    async def delete(self, uri: str) -> None:
        def remove() -> None:
            fs = self._filesystem()
            if fs.exists(uri):
                fs.rm(uri)

        await asyncio.to_thread(remove)
