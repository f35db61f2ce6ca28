"""Streaming split of requests into part files, one part file per future batch.

Invariants:
- Every input request ends either in exactly one part file or in exactly one :class:`RejectedRow`
  (reported through ``on_reject``); a custom_id seen earlier in the run is rejected as a duplicate.
- A part file never mixes groups (``EncodedRequest.group``: one model and endpoint per OpenAI
  batch) and never exceeds the request-count or byte limit; the byte count is the full upload
  (lines, their separators and the backend's ``body_overhead_bytes`` framing).
- Chunks are yielded as they close, so a caller can submit chunk 0 while chunk 1 is still being
  written. Memory is one open part buffer per group plus the seen-id table, never the requests.
- The input fingerprint is sha256 over every accepted line plus ``\\n``, in input order.
- With a ``wire_token`` (what a run does), the id on the wire is a wire id of
  :mod:`batch_provider.core.wire_ids`, never the row's own ``custom_id``: duplicates are still
  judged on the row id, rejections name the row id, and the sidecar maps each wire id back to it.
  The request is encoded under its wire id (``BatchBackend.encode_as``) and never changed.
  Without one, the row id is sent as is and must satisfy the provider's custom_id rule.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batch_provider.core.contract import BatchBackend, Chunk, EncodedRequest
from batch_provider.core.errors import RequestRejected
from batch_provider.core.jsonl import JsonlWriter
from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import LLMRequest, RejectedRow
from batch_provider.core.part_files import iter_part_lines, part_ids_path
from batch_provider.core.shaped import NativeTemplate, RequestShape, ShapedRequest
from batch_provider.core.wire_ids import _MAX_POSITION, SIDECAR_HEADER, sidecar_line, wire_id


def default_part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


_MASK64 = (1 << 64) - 1

DUPLICATE_ID = "duplicate custom_id within this run"
"""The reason given for a request whose custom_id an earlier accepted item of the run holds."""


class SeenIds:
    """Membership of custom_ids seen so far, in a flat table of 64-bit digests.

    Cost: 16 bytes per id at most (an ``array('Q')`` kept at most half full), i.e. about 16–32 MB
    per million ids, against ~100 MB for a ``set[str]``. Two distinct ids share a digest with
    probability about n²/2⁶⁵ (3·10⁻⁸ for a million ids); such a collision shows up as a visible
    "duplicate custom_id" rejection, never as a silently lost request. ``exact=True`` keeps the
    ids themselves in a ``set`` instead.
    """

    def __init__(self, *, exact: bool = False, capacity: int = 1 << 16) -> None:
        self._exact: set[str] | None = set() if exact else None
        size = 1
        while size < capacity:
            size <<= 1
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return len(self._exact) if self._exact is not None else self._count

    def __contains__(self, custom_id: object) -> bool:
        if self._exact is not None:
            return custom_id in self._exact
        digest = (hash(custom_id) & _MASK64) or 1
        table, mask = self._table, self._mask
        slot = digest & mask
        while (current := table[slot]) != 0:
            if current == digest:
                return True
            slot = (slot + 1) & mask
        return False

    def add(self, custom_id: str) -> bool:
        """Record ``custom_id``; False when it was already present."""
        if self._exact is not None:
            if custom_id in self._exact:
                return False
            self._exact.add(custom_id)
            return True
        # str hashes are 64-bit SipHash, keyed per process: enough for a table that lives in one.
        digest = (hash(custom_id) & _MASK64) or 1
        table, mask = self._table, self._mask
        slot = digest & mask
        while True:
            current = table[slot]
            if current == 0:
                break
            if current == digest:
                return False
            slot = (slot + 1) & mask
        table[slot] = digest
        self._count += 1
        if self._count * 2 > len(table):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._table
        size = len(old) * 2
        self._table = table = array("Q", bytes(8 * size))
        self._mask = mask = size - 1
        for digest in old:
            if digest:
                slot = digest & mask
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = digest


def _defining(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _encoder_as(backend: BatchBackend) -> Callable[[LLMRequest, str], EncodedRequest]:
    """How to encode a request under its wire id: the backend's ``encode_as`` when it is at
    least as specific as its ``encode`` (a subclass that overrides ``encode`` alone keeps its
    own), else ``encode`` of a copy carrying the wire id."""
    kind = type(backend)
    encode, encode_as = _defining(kind, "encode"), _defining(kind, "encode_as")
    if encode is not None and encode_as is not None and issubclass(encode_as, encode):
        return backend.encode_as

    def copy_then_encode(request: LLMRequest, custom_id: str) -> EncodedRequest:
        return backend.encode(request.model_copy(update={"custom_id": custom_id}))

    return copy_then_encode


@dataclass
class _OpenPart:
    index: int
    path: Any
    writer: JsonlWriter
    ids: JsonlWriter
    model: str | None
    endpoint: str | None

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            self.ids.close()


@dataclass
class SplitCounts:
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    chunks: int = 0
    bytes: int = 0


@dataclass
class RequestSplitter:
    """Encodes requests with ``backend`` and writes them into part files under ``parts_dir``.

    ``parts_dir`` may be a ``pathlib.Path`` or an object-storage path: only ``/``, ``name``,
    ``with_name``, ``open("wb")`` and ``mkdir(parents=True, exist_ok=True)`` are used. Each part file
    gets its ids sidecar (:func:`part_ids_path`).
    """

    backend: BatchBackend
    parts_dir: Any
    limits: ProviderLimits | None = None
    part_name: Callable[[int], str] = default_part_name
    on_reject: Callable[[RejectedRow], None] | None = None
    first_index: int = 0
    exact_ids: bool = False
    seen: SeenIds | None = None
    """The run's table of accepted custom_ids, when others besides the splitter accept items (the
    intake's cache hits); a new one otherwise."""
    counts: SplitCounts = field(default_factory=SplitCounts)
    wire_token: str | None = None
    """The run folder's wire-id token; None sends row ids as they are (plain library use)."""
    attempt: int = 1

    def __post_init__(self) -> None:
        self._limits = self.limits or self.backend.limits
        self._overhead = int(getattr(self.backend, "body_overhead_bytes", 0))
        self._seen = self.seen if self.seen is not None else SeenIds(exact=self.exact_ids)
        self._hash = hashlib.sha256()
        self._next_index = self.first_index
        self._wants_json = getattr(self.backend, "wants_json", None)
        self._encode_as = _encoder_as(self.backend)
        self._templates: dict[RequestShape, NativeTemplate | None] = {}

    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the accepted lines so far, in input order."""
        return self._hash.hexdigest()

    def split(self, requests: Iterable[LLMRequest | ShapedRequest]) -> Iterator[Chunk]:
        """Chunks in the order they close; the remaining open parts close after the last request."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        open_parts: dict[str, _OpenPart] = {}
        max_count = self._limits.max_requests_per_batch
        max_bytes = self._limits.max_bytes_per_batch - self._overhead
        wire_head: str | None = None
        try:
            for position, request in enumerate(requests, start=1):
                self.counts.inputs += 1
                row = request.row or position
                row_id = request.custom_id
                wire = row_id
                try:
                    if self.wire_token is not None:
                        accepted = self.counts.accepted
                        if wire_head is not None and accepted <= _MAX_POSITION:
                            wire = wire_head + f"{accepted:09d}"
                        else:  # the first one, checked by ``wire_id``; the others share its head
                            wire = wire_id(self.wire_token, self.attempt, accepted)
                            wire_head = wire[:-9]
                        line = None
                        if type(request) is ShapedRequest:
                            template = self._template(request.shape, wire[:-9])
                            line = None if template is None else template.line(wire, request.text)
                            if line is None:  # the general path decides
                                request = request.request()
                            else:
                                encoded = template
                        if line is None:
                            encoded = self._encode_as(request, wire)
                            line = encoded.line
                    else:
                        if type(request) is ShapedRequest:
                            request = request.request()
                        encoded = self.backend.encode(request)
                        line = encoded.line
                except RequestRejected as exc:
                    self._reject(
                        RejectedRow(
                            row=row,
                            custom_id=row_id if self.wire_token is not None else (exc.custom_id or row_id),
                            field=exc.field,
                            reason=exc.reason,
                        )
                    )
                    continue
                size = len(line) + 1
                if size > max_bytes:
                    self._reject(
                        RejectedRow(
                            row=row,
                            custom_id=row_id,
                            field="body",
                            reason=f"{size} bytes do not fit in one batch",
                        )
                    )
                    continue
                if not self._seen.add(row_id):
                    self._reject(
                        RejectedRow(
                            row=row,
                            custom_id=row_id,
                            field="custom_id",
                            reason=DUPLICATE_ID,
                        )
                    )
                    continue
                part = open_parts.get(encoded.group)
                if part is not None and (
                    part.writer.lines + 1 > max_count or part.writer.bytes + size > max_bytes
                ):
                    del open_parts[encoded.group]
                    yield self._close(part, encoded.group)
                    part = None
                if part is None:
                    part = self._open(encoded.model, encoded.endpoint)
                    open_parts[encoded.group] = part
                part.writer.write_line(line)
                wants_json = self._wants_json is not None and self._wants_json(line)
                if self.wire_token is None:
                    part.ids.write_line((b"1" if wants_json else b"0") + wire.encode())
                else:
                    part.ids.write_line(sidecar_line(wants_json, wire, row_id))
                self._hash.update(line)
                self._hash.update(b"\n")
                self.counts.accepted += 1
            for group, part in list(open_parts.items()):
                del open_parts[group]
                yield self._close(part, group)
        finally:
            for part in open_parts.values():
                part.close()

    def _template(self, shape: RequestShape, wire_head: str) -> NativeTemplate | None:
        """The template of ``shape``'s lines, made at its first request; None when it has none."""
        template = self._templates.get(shape, False)
        if template is False:
            # placeholders of the run's own wire-id form, at positions no run reaches
            placeholders = (wire_head + "999999998", wire_head + "999999999")
            template = self._templates[shape] = shape.native(
                self._encode_as, placeholders, self._wants_json, self.backend.limits.max_bytes_per_request
            )
        return template

    def _reject(self, rejected: RejectedRow) -> None:
        self.counts.rejected += 1
        if self.on_reject is not None:
            self.on_reject(rejected)

    def _open(self, model: str | None, endpoint: str | None) -> _OpenPart:
        index = self._next_index
        self._next_index += 1
        path = self.parts_dir / self.part_name(index)
        ids = JsonlWriter(part_ids_path(path))
        if self.wire_token is not None:
            ids.write_line(SIDECAR_HEADER)
        return _OpenPart(
            index=index,
            path=path,
            writer=JsonlWriter(path),
            ids=ids,
            model=model,
            endpoint=endpoint,
        )

    def _close(self, part: _OpenPart, group: str) -> Chunk:
        part.close()
        self.counts.chunks += 1
        self.counts.bytes += part.writer.bytes
        return Chunk(
            index=part.index,
            path=part.path,
            request_count=part.writer.lines,
            byte_size=part.writer.bytes,
            group=group,
            model=part.model,
            endpoint=part.endpoint,
        )


class SplitStream(Iterator[Chunk]):
    """The chunks of one split, as they close; ``fingerprint`` and ``counts`` are final once the
    iteration is exhausted."""

    def __init__(self, splitter: RequestSplitter, requests: Iterable[LLMRequest]) -> None:
        self.splitter = splitter
        self._chunks = splitter.split(requests)

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def close(self) -> None:
        """Stop early: close the open part files (their chunks are not yielded)."""
        self._chunks.close()

    @property
    def fingerprint(self) -> str:
        return self.splitter.fingerprint

    @property
    def counts(self) -> SplitCounts:
        return self.splitter.counts


def split_requests(
    requests: Iterable[LLMRequest],
    backend: BatchBackend,
    parts_dir: Any,
    *,
    limits: ProviderLimits | None = None,
    part_name: Callable[[int], str] = default_part_name,
    on_reject: Callable[[RejectedRow], None] | None = None,
    exact_ids: bool = False,
) -> SplitStream:
    """Stream ``requests`` into part files under ``parts_dir``, yielding each chunk as it closes;
    the returned stream's ``fingerprint`` and ``counts`` are complete after the last chunk."""
    splitter = RequestSplitter(
        backend, parts_dir, limits=limits, part_name=part_name, on_reject=on_reject, exact_ids=exact_ids
    )
    return SplitStream(splitter, requests)


def fingerprint_lines(lines: Iterable[bytes]) -> str:
    """sha256 over ``line + b"\\n"`` for each encoded line, in order (what the splitter computes)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
        digest.update(b"\n")
    return digest.hexdigest()


def fingerprint_file(path: Any) -> str:
    """sha256 of a part file's lines, recomputed from storage, plain or packed (equals the chunk's
    own fingerprint)."""
    return fingerprint_lines(iter_part_lines(path))


__all__ = [
    "RejectedRow",
    "RequestSplitter",
    "SeenIds",
    "SplitCounts",
    "SplitStream",
    "default_part_name",
    "fingerprint_file",
    "fingerprint_lines",
    "part_ids_path",
    "split_requests",
]
