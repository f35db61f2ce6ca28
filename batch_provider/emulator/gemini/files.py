"""Gemini Files: resumable uploads and the file records batches read (``files/<id>``).

Protocol (what ``google-genai`` sends)::

    POST /upload/v1beta/files                X-Goog-Upload-Protocol: resumable, X-Goog-Upload-Command: start,
                                             X-Goog-Upload-Header-Content-Length / -Content-Type,
                                             body {"file": {"displayName", "mimeType"}}
         → 200, x-goog-upload-url: <same path>?upload_id=<id>&upload_protocol=resumable
    POST <upload url>                        X-Goog-Upload-Command: upload | upload, finalize | finalize,
                                             X-Goog-Upload-Offset: <bytes sent before this chunk>
         → 200, x-goog-upload-status: active (no body) | final ({"file": {...}})

Invariants:
- Contents live on disk under ``<data dir>/gemini/files``; a chunk is streamed there, never held
  whole in memory.
- A chunk at an offset below what was received replaces the bytes from that offset on (a client
  re-sending after a lost answer); an offset beyond it is a 400.
- Finalizing an already finalized session answers the same file again, so a retried
  ``upload, finalize`` never makes a second file.
- Files expire ``file_ttl_seconds`` after creation (Gemini keeps files 48 h).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..clock import rfc3339
from ..store import write_json

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_name(n: int = 12) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


class GeminiError(Exception):
    """A Google API error: HTTP status, canonical status name and message."""

    def __init__(self, code: int, status: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details: list[dict[str, Any]] = []


def invalid(message: str) -> GeminiError:
    return GeminiError(400, "INVALID_ARGUMENT", message)


def not_found(message: str) -> GeminiError:
    return GeminiError(404, "NOT_FOUND", message)


@dataclass
class GeminiFile:
    id: str
    display_name: str
    mime_type: str
    size_bytes: int
    created_at: float
    expires_at: float
    source: str = "UPLOADED"

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    def to_api(self, base_url: str) -> dict[str, Any]:
        out = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size_bytes),
            "createTime": rfc3339(self.created_at),
            "updateTime": rfc3339(self.created_at),
            "expirationTime": rfc3339(self.expires_at),
            "sha256Hash": "",
            "uri": f"{base_url}/v1beta/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            out["downloadUri"] = f"{base_url}/download/v1beta/{self.name}:download?alt=media"
        return out


@dataclass
class UploadSession:
    id: str
    display_name: str
    mime_type: str
    declared_size: int | None
    received: int = 0
    file_id: str | None = None


class GeminiFiles:
    def __init__(self, root: Path, ttl_seconds: Callable[[], float]) -> None:
        self.dir = root / "files"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl_seconds = ttl_seconds
        self.records: dict[str, GeminiFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        for meta in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(ValueError, TypeError):
                rec = GeminiFile(**json.loads(meta.read_text()))
                if self.path(rec.id).exists():
                    self.records[rec.id] = rec

    def path(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.bin"

    def _partial(self, session_id: str) -> Path:
        return self.dir / f"upload-{session_id}.part"

    def start(self, body: Any, headers: Any) -> UploadSession:
        if (headers.get("x-goog-upload-protocol") or "").lower() != "resumable":
            raise invalid("Only the resumable upload protocol is supported (X-Goog-Upload-Protocol).")
        if (headers.get("x-goog-upload-command") or "").lower() != "start":
            raise invalid("The first call of a resumable upload needs X-Goog-Upload-Command: start.")
        meta = (body or {}).get("file") if isinstance(body, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        raw_size = headers.get("x-goog-upload-header-content-length")
        try:
            size = int(raw_size) if raw_size else None
        except ValueError:
            raise invalid("X-Goog-Upload-Header-Content-Length must be an integer.") from None
        mime = str(meta.get("mimeType") or headers.get("x-goog-upload-header-content-type") or "")
        session = UploadSession(
            id=new_name(24),
            display_name=str(meta.get("displayName") or ""),
            mime_type=mime or "application/octet-stream",
            declared_size=size,
        )
        self.sessions[session.id] = session
        self._partial(session.id).write_bytes(b"")
        return session

    def session(self, session_id: str) -> UploadSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise not_found("The upload session does not exist or has expired.")
        return session

    def open_chunk(self, session: UploadSession, offset: int) -> Any:
        """A file handle positioned at ``offset`` to write the next chunk into."""
        if session.file_id is not None:
            return None
        if offset > session.received:
            raise invalid(f"X-Goog-Upload-Offset {offset} is beyond the {session.received} bytes received.")
        fh = self._partial(session.id).open("r+b")
        fh.truncate(offset)
        fh.seek(offset)
        return fh

    def finalize(self, session: UploadSession, now: float, max_bytes: int) -> GeminiFile:
        if session.file_id is not None and session.file_id in self.records:
            return self.records[session.file_id]
        if session.declared_size is not None and session.received != session.declared_size:
            raise invalid(
                f"The upload has {session.received} bytes, not the {session.declared_size} announced."
            )
        if session.received > max_bytes:
            raise invalid(f"The file is {session.received} bytes, over the limit of {max_bytes}.")
        rec = GeminiFile(
            id=new_name(),
            display_name=session.display_name,
            mime_type=session.mime_type,
            size_bytes=session.received,
            created_at=now,
            expires_at=now + self.ttl_seconds(),
        )
        self._partial(session.id).replace(self.path(rec.id))
        write_json(self.dir / f"{rec.id}.json", asdict(rec))
        self.records[rec.id] = rec
        session.file_id = rec.id
        return rec

    def get(self, name: str, now: float) -> GeminiFile:
        file_id = name.removeprefix("files/")
        rec = self.records.get(file_id)
        if rec is None or now >= rec.expires_at:
            raise GeminiError(
                403,
                "PERMISSION_DENIED",
                f"You do not have permission to access the File {file_id} or it may not exist.",
            )
        return rec

    def delete(self, name: str) -> bool:
        file_id = name.removeprefix("files/")
        rec = self.records.pop(file_id, None)
        for p in (self.path(file_id), self.dir / f"{file_id}.json"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return rec is not None

    def listed(self, now: float) -> list[GeminiFile]:
        return sorted(
            (r for r in self.records.values() if now < r.expires_at), key=lambda r: r.created_at, reverse=True
        )

    def clear(self) -> None:
        for file_id in list(self.records):
            self.delete(file_id)
        for session_id in list(self.sessions):
            with contextlib.suppress(FileNotFoundError):
                self._partial(session_id).unlink()
        self.sessions.clear()
