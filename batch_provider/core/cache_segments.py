"""Result-cache storage: many entries in one segment object, found through the segment's index.

Layout under the cache root:

- ``segments/<name>.jsonl``: one line per entry, ``{"key", "stored_at", "record"}`` (the record
  as in a results file);
- ``indexes/<name>.idx``: the segment's key index: :data:`INDEX_MAGIC`, one JSON header line
  (``segment``, ``stored_at``, ``count``), then ``count`` fixed-size entries (:data:`_ENTRY`:
  the key's 32 bytes, the line's offset and length in the segment).

``<name>`` is ``<newest stored_at, %Y%m%dT%H%M%S%fZ>-<random hex>``.

Invariants:
- A segment is written whole (:func:`atomic_write`) before its index, and only an index makes
  entries visible: a reader never looks at a segment no index names. An index whose size does not
  match its header is ignored, and an entry whose bytes are not exactly one JSON line carrying the
  indexed key is a miss, so a torn or half-written object never gives a hit.
- Every writer picks a name of its own, so concurrent writers (collects of different runs) never
  replace each other's objects: readers list ``indexes/`` to find every segment.
- An index's name carries the newest ``stored_at`` of its entries: a reader skips the indexes that
  are wholly past the TTL without reading them; each entry's own ``stored_at`` is checked on a hit.
- A writer spools its lines to a local temporary file, so memory holds 44 bytes per entry; a
  reader keeps at most ``WINDOWS * (READAHEAD + MAX_SPAN)`` bytes of segments.
- A reader holds every fresh entry's location in three arrays (20 bytes per entry), keyed by the
  key's last 8 bytes; a hit is a line carrying the full key, so keys sharing those bytes never
  answer for each other. Of several entries with one key the newest wins.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import struct
import tempfile
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from batch_provider.core.models import ResultRecord
from batch_provider.core.rundir import atomic_write, local_path

log = logging.getLogger(__name__)

SEGMENTS = "segments"
INDEXES = "indexes"
INDEX_MAGIC = b"batch-provider result-cache index 1\n"
_ENTRY = struct.Struct(">32sQI")
_STAMP = "%Y%m%dT%H%M%S%fZ"
_NAME = re.compile(r"^(\d{8}T\d{12}Z)-[0-9a-f]+$")
MAX_GAP = 1 << 20
"""Hits in one segment less than this many bytes apart are read in one ranged request."""
MAX_SPAN = 32 << 20
"""Largest single ranged read."""
READAHEAD = 4 << 20
"""Bytes read past a dense run of hits (see :class:`SegmentReader`)."""
WINDOWS = 4
"""Segments whose last read a reader keeps."""
_OFFSET_MASK = (1 << 44) - 1
_MAX_CANDIDATES = 4
"""Entries read for one key at most: the same key stored again, or another key sharing the bytes
the table is keyed by."""


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_STAMP)


def _stamp_time(name: str) -> datetime | None:
    match = _NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)


class SegmentWriter:
    """Collects entries into one segment; :meth:`commit` writes the segment, then its index.

    Nothing is written for a writer without entries, so a run served wholly from the cache adds
    no objects."""

    def __init__(self, root: Any, stored_at: datetime | None = None):
        self.root = root
        self.stored_at = stored_at or datetime.now(UTC)
        self._newest = self.stored_at
        self._stamp = self.stored_at.isoformat().encode()
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by commit or discard
        self._index = bytearray()
        self._offset = 0
        self.count = 0
        self.committed: str | None = None
        """The segment name, once committed."""

    def add(
        self,
        key: str,
        record: ResultRecord,
        stored_at: datetime | None = None,
        *,
        record_line: bytes | None = None,
    ) -> None:
        """Append one entry (the caller keeps only succeeded records); ``record_line``, when
        given, is ``record.json_line()`` already made."""
        stamp = self._stamp
        if stored_at is not None:
            stamp = stored_at.isoformat().encode()
            self._newest = max(self._newest, stored_at)
        line = b'{"key":"%s","stored_at":"%s","record":%s}\n' % (
            key.encode(),
            stamp,
            (record_line or record.json_line())[:-1],
        )
        self._spool.write(line)
        self._index += _ENTRY.pack(bytes.fromhex(key), self._offset, len(line))
        self._offset += len(line)
        self.count += 1

    def commit(self) -> str | None:
        """Write the segment, then its index; the segment's name, or None when empty. May be
        called again after a failure: each try writes under a new name."""
        if not self.count or self.committed:
            return self.committed
        name = f"{_stamp(self._newest)}-{secrets.token_hex(8)}"
        segment = f"{SEGMENTS}/{name}.jsonl"
        self._spool.seek(0)
        with atomic_write(self.root / SEGMENTS / f"{name}.jsonl") as fh:
            shutil.copyfileobj(self._spool, fh, 1 << 20)
        header = {"segment": segment, "stored_at": self._newest.isoformat(), "count": self.count}
        with atomic_write(self.root / INDEXES / f"{name}.idx") as fh:
            fh.write(INDEX_MAGIC + json.dumps(header).encode() + b"\n")
            fh.write(self._index)
        self.committed = name
        self.discard()
        return name

    def discard(self) -> None:
        self._spool.close()


def parse_index(data: bytes) -> tuple[str, datetime, bytes] | None:
    """(segment path, stored_at, packed entries) of an index, or None when it is not a whole one."""
    if not data.startswith(INDEX_MAGIC):
        return None
    end = data.find(b"\n", len(INDEX_MAGIC))
    if end < 0:
        return None
    try:
        header = json.loads(data[len(INDEX_MAGIC) : end])
        segment, count = str(header["segment"]), int(header["count"])
        stored_at = datetime.fromisoformat(header["stored_at"])
    except (ValueError, KeyError, TypeError):
        return None
    body = data[end + 1 :]
    name = segment.removeprefix(f"{SEGMENTS}/").removesuffix(".jsonl")
    if len(body) != count * _ENTRY.size or segment != f"{SEGMENTS}/{name}.jsonl" or not _NAME.match(name):
        return None  # torn, or naming something other than a segment of this cache
    return segment, stored_at, body


class Location(NamedTuple):
    segment: int
    offset: int
    length: int


class KeyTable:
    """Where each key's newest entry is: sorted arrays searched by bisection."""

    def __init__(self, segments: list[str], indexes: list[bytes]):
        """``indexes[i]`` holds the packed entries of ``segments[i]``; later segments are newer."""
        self.segments = segments
        packed: list[int] = []
        from_bytes = int.from_bytes
        for number, body in enumerate(indexes):
            segment = number << 76
            # prefix | segment (20 bits) | offset (44 bits) | length (32 bits), sortable as one int
            packed += [
                (from_bytes(key[24:]) << 96) | segment | (offset << 32) | length
                for key, offset, length in _ENTRY.iter_unpack(body)
            ]
        packed.sort()
        self._prefixes = array("Q", [v >> 96 for v in packed])
        self._places = array("Q", [(v >> 32) & 0xFFFF_FFFF_FFFF_FFFF for v in packed])
        self._lengths = array("I", [v & 0xFFFF_FFFF for v in packed])

    def __len__(self) -> int:
        return len(self._prefixes)

    def find(self, key: str) -> list[Location]:
        """The entries that may hold ``key``, newest first (almost always one, or none)."""
        prefixes = self._prefixes
        prefix = int(key[-16:], 16)
        at = bisect_right(prefixes, prefix) - 1
        if at < 0 or prefixes[at] != prefix:
            return []
        found = []
        while at >= 0 and prefixes[at] == prefix and len(found) < _MAX_CANDIDATES:
            place = self._places[at]
            found.append(Location(place >> 44, place & _OFFSET_MASK, self._lengths[at]))
            at -= 1
        return found


def list_names(folder: Any) -> list[str]:
    """Names of the files directly in ``folder`` (none when it does not exist), listed afresh."""
    local = local_path(folder)
    if local is not None:
        return [p.name for p in local.iterdir()] if local.is_dir() else []
    fs = folder.fs
    invalidate = getattr(fs, "invalidate_cache", None)
    if invalidate is not None:
        invalidate(folder.path)
    try:
        return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder.path, detail=False)]
    except FileNotFoundError:
        return []


def read_objects(root: Any, names: list[str]) -> dict[str, bytes]:
    """The bytes of ``root / name`` for each name that exists (one concurrent fetch on fsspec)."""
    local = local_path(root)
    found: dict[str, bytes] = {}
    if local is not None:
        for name in names:
            try:
                found[name] = (local / name).read_bytes()
            except OSError:
                continue
        return found
    fs = root.fs
    by_path = {fs._strip_protocol((root / name).path): name for name in names}
    fetched = fs.cat(list(by_path), on_error="omit") if by_path else {}
    return {by_path[fs._strip_protocol(path)]: data for path, data in fetched.items()}


def read_ranges(root: Any, ranges: list[tuple[str, int, int]]) -> list[bytes | None]:
    """The bytes ``[start, end)`` of ``root / name`` for each ``(name, start, end)``; None for a
    range that could not be read. One concurrent request per range on fsspec."""
    if not ranges:
        return []
    local = local_path(root)
    if local is not None:
        out: list[bytes | None] = []
        for name, start, end in ranges:
            try:
                with open(local / name, "rb") as fh:
                    fh.seek(start)
                    out.append(fh.read(end - start))
            except OSError:
                out.append(None)
        return out
    fs = root.fs
    paths = [(root / name).path for name, _, _ in ranges]
    got = fs.cat_ranges(paths, [s for _, s, _ in ranges], [e for _, _, e in ranges], on_error="return")
    return [data if isinstance(data, bytes) else None for data in got]


def expired_names(root: Any, ttl: timedelta) -> list[str]:
    """The segments (by name) whose every entry is past ``ttl``, judged from their index names."""
    now = datetime.now(UTC)
    names = []
    for name in list_names(root / INDEXES):
        stamp = _stamp_time(name.removesuffix(".idx"))
        if name.endswith(".idx") and stamp is not None and now - stamp > ttl:
            names.append(name.removesuffix(".idx"))
    return sorted(names)


def remove_segments(root: Any, names: list[str]) -> None:
    """Delete each named segment's index, then the segment: a reader that still holds the index
    finds the segment gone and counts a miss."""
    for folder, suffix in ((INDEXES, ".idx"), (SEGMENTS, ".jsonl")):
        paths = [root / folder / f"{name}{suffix}" for name in names]
        local = local_path(root)
        if local is not None:
            for path in paths:
                local_path(path).unlink(missing_ok=True)
        elif paths:
            root.fs.rm([path.path for path in paths])


def load_table(root: Any, ttl: timedelta | None) -> KeyTable:
    """Every fresh index under ``root``: one listing and one concurrent fetch."""
    now = datetime.now(UTC)
    names = []
    for name in list_names(root / INDEXES):
        if not name.endswith(".idx"):
            continue
        stamp = _stamp_time(name.removesuffix(".idx"))
        if stamp is None or (ttl is not None and now - stamp > ttl):
            continue
        names.append(f"{INDEXES}/{name}")
    names.sort()  # by stamp: later segments are newer
    segments: list[str] = []
    bodies: list[bytes] = []
    fetched = read_objects(root, names)
    for name in names:
        parsed = parse_index(fetched[name]) if name in fetched else None
        if parsed is None:
            if name in fetched:
                log.warning("Result cache %s: %s is not a whole index; its entries are misses", root, name)
            continue
        segments.append(parsed[0])
        bodies.append(parsed[2])
    return KeyTable(segments, bodies)


class SegmentReader:
    """Reads the lines of hits from segments; keeps the last bytes read of a few segments, since
    a re-run looks its keys up in the order they were stored.

    When a block's hits in a segment are dense (a run of consecutive lines, as a re-run of the same
    input asks), the read goes :data:`READAHEAD` bytes further, so the next blocks are served from
    memory; scattered hits are read without it. At most :data:`WINDOWS` such reads are kept."""

    def __init__(self, root: Any, table: KeyTable):
        self.root = root
        self.table = table
        self._windows: dict[int, tuple[int, bytes]] = {}
        self.requests = 0
        """Ranged reads sent so far."""

    def lines(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The newest segment line carrying each of ``keys``: hits close together in one segment
        are read with one ranged request. A line that cannot be read, or whose key differs, is
        absent."""
        table = self.table
        wanted = [(key, rank, place) for key in keys for rank, place in enumerate(table.find(key))]
        wanted.sort(key=lambda item: (item[2].segment, item[2].offset))
        spans: list[tuple[int, int, int, list[tuple[str, int, Location]]]] = []
        for key, rank, place in wanted:
            end = place.offset + place.length
            if spans:
                segment, start, stop, members = spans[-1]
                if segment == place.segment and place.offset - stop <= MAX_GAP and end - start <= MAX_SPAN:
                    spans[-1] = (segment, start, max(stop, end), members)
                    members.append((key, rank, place))
                    continue
            spans.append((place.segment, place.offset, end, [(key, rank, place)]))
        blobs: list[tuple[int, bytes] | None] = [
            self._buffered(s, start, stop) for s, start, stop, _ in spans
        ]
        missing = [i for i, blob in enumerate(blobs) if blob is None]
        reads = []
        for i in missing:
            segment, start, stop, members = spans[i]
            dense = sum(place.length for _, _, place in members) * 2 >= stop - start
            reads.append((table.segments[segment], start, stop + READAHEAD if dense else stop))
        self.requests += len(reads)
        for i, data in zip(missing, read_ranges(self.root, reads), strict=True):
            if data is not None:
                blobs[i] = (spans[i][1], data)
                self._keep(spans[i][0], spans[i][1], data)
        best: dict[str, tuple[int, bytes]] = {}
        for (_, _, _, members), blob in zip(spans, blobs, strict=True):
            if blob is None:
                continue
            start, data = blob
            for key, rank, place in members:
                line = data[place.offset - start : place.offset - start + place.length]
                if (
                    len(line) == place.length
                    and line.endswith(b"\n")
                    and line.startswith(b'{"key":"%s"' % key.encode())
                    and (key not in best or rank < best[key][0])
                ):
                    best[key] = (rank, line)
        return {key: line for key, (_, line) in best.items()}

    def _buffered(self, segment: int, start: int, stop: int) -> tuple[int, bytes] | None:
        window = self._windows.get(segment)
        if window is not None and window[0] <= start and stop <= window[0] + len(window[1]):
            return window
        return None

    def _keep(self, segment: int, start: int, data: bytes) -> None:
        self._windows.pop(segment, None)
        self._windows[segment] = (start, data)
        while len(self._windows) > WINDOWS:
            del self._windows[next(iter(self._windows))]
