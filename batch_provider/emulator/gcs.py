"""Google Cloud Storage beside the emulator: where Vertex AI batch prediction jobs read and write.

Vertex reads a job's input JSONL from ``gs://`` and writes its predictions there, so the emulator
needs a GCS JSON API: any endpoint (``BATCH_EMULATOR_GCS_ENDPOINT``, or ``POST /_emu/vertex
{"gcs_endpoint": ...}``), or the ``gcp-storage-emulator`` package started in this process on
loopback (``--with-gcs``), as moto's S3 is for Bedrock. Its objects live under ``<data dir>/gcs``,
so a restarted emulator finds them again, on the same port when it is free.

Clients: ``gcsfs`` talks to it with ``endpoint_url=<endpoint>`` and ``token="anon"``. Use
``gcsfs.core.GCSFileSystem`` (or set ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` before importing
gcsfs): the default ``gcsfs.GCSFileSystem`` of gcsfs 2026.x first asks a gRPC storage-control
service for each bucket's layout, which no local emulator serves, and waits 60 s per bucket before
falling back to the JSON API.

Invariants:
- :class:`GcsAccess` is called from worker threads only; it speaks the JSON API with httpx
  (list, media download, media upload), nothing else.
- The local server answers one request at a time (``gcp-storage-emulator`` keeps its object
  index in one JSON file, rewritten on every change).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from urllib.parse import quote

import httpx

GCS_ENDPOINT_ENV = "BATCH_EMULATOR_GCS_ENDPOINT"
_WILDCARD = "*?["


class GcsError(Exception):
    """A GCS call that failed, or a ``gs://`` URI that is not one."""


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/key`` as (bucket, key); the key may be empty."""
    if not isinstance(uri, str) or not uri.startswith("gs://") or len(uri) <= 5:
        raise GcsError(f"Invalid GCS URI {uri!r}: expected gs://bucket/path")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise GcsError(f"Invalid GCS URI {uri!r}: no bucket")
    return bucket, key


class GcsAccess:
    """The GCS JSON API at one endpoint, for worker threads (one httpx client, shared)."""

    def __init__(self, endpoint: str, timeout: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _check(self, resp: httpx.Response, what: str) -> httpx.Response:
        if resp.status_code >= 300:
            raise GcsError(f"{what}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp

    def bucket_exists(self, bucket: str) -> bool:
        resp = self._client.get(f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}")
        return resp.status_code == 200

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the objects of ``bucket`` under ``prefix``, sorted."""
        names: list[str] = []
        token: str | None = None
        while True:
            params = {"prefix": prefix} if prefix else {}
            if token:
                params["pageToken"] = token
            resp = self._check(
                self._client.get(f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o", params=params),
                f"list gs://{bucket}/{prefix}",
            )
            body = resp.json()
            names.extend(item["name"] for item in body.get("items") or [])
            token = body.get("nextPageToken")
            if not token:
                return sorted(names)

    def expand(self, uri: str) -> list[tuple[str, str]]:
        """(bucket, object) of every object ``uri`` names: itself, or the matches of its
        wildcards (``*``, ``?``, ``[...]`` in the object part, as Vertex accepts them)."""
        bucket, key = split_gs_uri(uri)
        cut = min((key.find(c) for c in _WILDCARD if c in key), default=-1)
        if cut < 0:
            return [(bucket, key)]
        return [(bucket, name) for name in self.list(bucket, key[:cut]) if fnmatch.fnmatchcase(name, key)]

    def read(self, bucket: str, name: str) -> bytes:
        url = f"{self.endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        resp = self._client.get(url, params={"alt": "media"})
        if resp.status_code == 404:
            raise FileNotFoundError(f"gs://{bucket}/{name}")
        return self._check(resp, f"read gs://{bucket}/{name}").content

    def write(self, bucket: str, name: str, data: bytes, content_type: str = "application/jsonl") -> None:
        """Upload one object: a resumable session (its metadata), then its bytes in one request."""
        start = self._client.post(
            f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            params={"uploadType": "resumable", "name": name},
            json={"name": name, "contentType": content_type},
            headers={"x-upload-content-type": content_type, "x-upload-content-length": str(len(data))},
        )
        session = self._check(start, f"start upload of gs://{bucket}/{name}").headers.get("location")
        if not session:
            raise GcsError(f"start upload of gs://{bucket}/{name}: no session URL")
        span = f"bytes 0-{len(data) - 1}/{len(data)}" if data else "bytes */0"
        resp = self._client.put(
            session, content=data, headers={"content-type": content_type, "content-range": span}
        )
        self._check(resp, f"write gs://{bucket}/{name}")

    def create_bucket(self, bucket: str, project: str = "emulator") -> None:
        """Create ``bucket`` (an existing one is left as it is)."""
        resp = self._client.post(
            f"{self.endpoint}/storage/v1/b", params={"project": project}, json={"name": bucket}
        )
        if resp.status_code not in (200, 409):
            self._check(resp, f"create bucket {bucket}")


class LocalGcs:
    """``gcp-storage-emulator`` served from a daemon thread of this process."""

    def __init__(self, httpd: HTTPServer, thread: threading.Thread) -> None:
        self.httpd = httpd
        self.thread = thread

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _saved_port(data_dir: Path | None) -> int:
    if data_dir is None:
        return 0
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads((data_dir / "endpoint.json").read_text())["port"])
    return 0


def start_local_gcs(
    host: str = "127.0.0.1", port: int = 0, data_dir: str | os.PathLike[str] | None = None
) -> LocalGcs:
    """Start ``gcp-storage-emulator`` on loopback and publish its URL in
    ``BATCH_EMULATOR_GCS_ENDPOINT``. With ``data_dir``, objects live there and the port used last
    time is taken again when free (a restart keeps the endpoint); without it, in memory."""
    from functools import partial

    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    root = Path(data_dir) if data_dir is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    storage = Storage(use_memory_fs=root is None, data_dir=str(root.resolve()) if root else None)
    bind = "127.0.0.1" if host in ("", "0.0.0.0", "localhost") else host

    class Server(HTTPServer):
        request_queue_size = 256  # clients open many connections at once; the default 5 drops SYNs

    handler = partial(RequestHandler, storage)
    try_port = port or _saved_port(root)
    try:
        httpd = Server((bind, try_port), handler)
    except OSError:
        if not try_port or port:
            raise
        httpd = Server((bind, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="local-gcs", daemon=True)
    thread.start()
    local = LocalGcs(httpd, thread)
    if root is not None:
        (root / "endpoint.json").write_text(json.dumps({"port": httpd.server_address[1]}))
    os.environ[GCS_ENDPOINT_ENV] = local.endpoint
    return local


def iter_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) of the non-blank lines of ``data``."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            yield number, raw
