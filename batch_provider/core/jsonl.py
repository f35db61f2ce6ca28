"""Streaming JSONL: read and write one JSON object per line without holding a file in memory.

Invariants:
- Readers accept a missing final newline, ``\\r\\n`` line ends, and skip blank lines.
- Writers emit compact UTF-8 JSON, one object per line, each line ending in ``\\n``.
- :func:`loads` accepts exactly what ``json.loads`` accepts and returns the same values;
  :func:`dumps_line` writes what ``json.dumps(separators=(",", ":"), ensure_ascii=False)`` writes,
  keys in insertion order, except that exponents have no ``+``/leading zero (``1e16``) and
  non-finite floats become ``null`` (plain ``json`` would write ``NaN``, which is not JSON).
- Paths may be ``pathlib.Path`` or an object-storage path (anything with ``.open(mode)``).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Protocol

import msgspec
from pydantic import BaseModel

from batch_provider.core.rundir import local_path


class OpenablePath(Protocol):
    def open(self, mode: str = ...) -> Any: ...


_BLOCK_BYTES = 1 << 20


def iter_lines(fileobj: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    """Non-blank lines of a binary file, line ends stripped.

    A file is read a block at a time and split in one call per block: iterating a compressed or
    remote file line by line goes through its ``readline``, several times slower per line. A line
    is yielded only once its newline (or the end of the file) has been read."""
    read = getattr(fileobj, "read", None)
    if read is None:
        for raw in fileobj:
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield line
        return
    pending: list[bytes] = []
    while block := read(_BLOCK_BYTES):
        pending.append(block)
        if b"\n" in block:
            lines, tail = _complete_lines(b"".join(pending))
            pending = [tail] if tail else []
            yield from lines
    yield from _last_line(b"".join(pending))


def _complete_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The non-blank newline-terminated lines of ``data`` (line ends stripped), and what follows
    the last newline."""
    *complete, tail = data.split(b"\n")
    return [line for raw in complete if (line := raw.rstrip(b"\r")) and not line.isspace()], tail


def _last_line(tail: bytes) -> list[bytes]:
    """The unterminated end of a stream as a final line, when it is not blank."""
    line = tail.rstrip(b"\r")
    return [line] if line and not line.isspace() else []


def iter_path_lines(path: OpenablePath) -> Iterator[bytes]:
    """Non-blank lines of the file at ``path``, line ends stripped; the file is closed at the end."""
    with path.open("rb") as fileobj:
        yield from iter_lines(fileobj)


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def loads(data: bytes | str) -> Any:
    """Decode one JSON document; raises ``json.JSONDecodeError`` (a ``ValueError``) when it is not
    JSON. msgspec decodes the common case several times faster than ``json``; anything it refuses
    goes through ``json.loads``, so its error messages and extensions are kept."""
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return json.loads(data)


def read_jsonl(path: OpenablePath) -> Iterator[Any]:
    """Each line of the file at ``path``, decoded."""
    for line in iter_path_lines(path):
        yield loads(line)


def dumps_line(value: Any) -> bytes:
    """One compact JSON line (no newline) for a dict, list or pydantic model."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(exclude_none=False).encode()
    try:
        return _encode(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def aiter_line_blocks(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[list[bytes], bool]]:
    """Non-blank lines of a byte stream, one list per chunk that completes lines, each list with
    whether its lines were newline-terminated (False only for a final line cut short).

    Lists rather than single lines keep the per-line cost of a large download to plain loops.
    """
    pending = b""
    async for chunk in chunks:
        if not chunk:
            continue
        pending += chunk
        if b"\n" not in chunk:
            continue
        lines, pending = _complete_lines(pending)
        if lines:
            yield lines, True
    last = _last_line(pending)
    if last:
        yield last, False


async def aiter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[bytes, bool]]:
    """Non-blank lines of a byte stream, each with whether it was newline-terminated.

    The flag lets a caller tell a complete final line from a body cut short mid-line.
    """
    async for lines, terminated in aiter_line_blocks(chunks):
        for line in lines:
            yield line, terminated


class JsonlWriter:
    """Buffered line writer to ``path`` (opened ``"wb"``), counting lines and bytes written.

    On a local disk the lines go to a temporary file renamed over ``path`` on close, so a reader
    (another process submitting the same run) sees the previous whole file or the new whole file,
    never a half-written one; object stores give that by uploading on close."""

    def __init__(self, path: OpenablePath, *, buffer_bytes: int = 1 << 20) -> None:
        self.path = path
        self.lines = 0
        self.bytes = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._buffer_bytes = buffer_bytes
        self._tmp: pathlib.Path | None = None
        self._local = local_path(path)
        if self._local is not None:
            self._tmp = self._local.with_name(f".{self._local.name}.{os.getpid()}.{id(self):x}.tmp")
            self._file: Any = self._tmp.open("wb")
        else:
            self._file = path.open("wb")

    def write_line(self, line: bytes) -> None:
        """Append one already-encoded line (without its newline)."""
        self._buffer.append(line)
        self._buffer.append(b"\n")
        size = len(line) + 1
        self._buffered += size
        self.bytes += size
        self.lines += 1
        if self._buffered >= self._buffer_bytes:
            self.flush()

    def write(self, value: Any) -> None:
        """Append one dict, list or pydantic model as a line."""
        self.write_line(dumps_line(value))

    def flush(self) -> None:
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None
            if self._tmp is not None and self._local is not None:
                os.replace(self._tmp, self._local)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
