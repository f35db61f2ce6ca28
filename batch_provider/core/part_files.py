"""Part files at rest: plain while their batch may still be created, gzip once the ledger holds it.

A part file (``attempt-N/requests/part-00000.jsonl``) and its ids sidecar (``part-00000.ids``)
are what a batch is uploaded from, what a retry or the sync fallback resends from and what collect
maps wire ids back to row ids with. Only the upload needs them plain. Once every chunk of an
attempt has its batch in the ledger, :func:`pack_parts` stores each as ``<name>.gz``: request
lines repeat the model, the system prompt and the JSON keys, so they shrink 20–40 times.

Invariants:
- A part and its sidecar can be read whole at every moment: the ``.gz`` is written completely
  (atomically, :func:`batch_provider.core.rundir.atomic_write`) before the plain file is removed,
  and is never removed itself; readers take it when it is there, else the plain file, and finish
  from it a plain file removed under them (both hold the same lines).
- The ledger and ``batches.json`` keep the plain name; :func:`iter_part_lines` resolves it.
- Only parts whose batch the saved ledger records are packed, so a create call, which only a chunk
  without a batch makes, always finds its part plain.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

from batch_provider.core.jsonl import iter_lines
from batch_provider.core.rundir import atomic_write, local_path

log = logging.getLogger(__name__)

PACKED_SUFFIX = ".gz"

# Level 1: within 1 % of level 6's size on request lines, at half its CPU time.
_LEVEL = 1
_COPY_BLOCK = 1 << 20


def part_ids_path(part_path: Any) -> Any:
    """The sidecar of a part file listing its ids (``part-00000.jsonl`` → ``part-00000.ids``).

    One line per request in part-file order: ``1`` or ``0`` (whether the request asked for
    JSON-schema output) followed by its ids (format in :mod:`batch_provider.core.wire_ids`). Collect
    reads it instead of decoding the whole part file again, and maps wire ids back to row ids.
    """
    name = part_path.name
    return part_path.with_name(name.removesuffix(".jsonl") + ".ids")


def packed_path(path: Any) -> Any:
    """Where ``path`` is kept once packed (``part-00000.jsonl`` → ``part-00000.jsonl.gz``)."""
    return path.with_name(path.name + PACKED_SUFFIX)


def iter_part_lines(path: Any) -> Iterator[bytes]:
    """Non-blank lines of the part (or sidecar) at ``path``, plain or packed, line ends stripped;
    FileNotFoundError names ``path`` when neither exists.

    The packed copy is read when there is one (it is never removed). A plain file removed while
    it is read (on object storage a read is a series of ranged GETs; another process of this run
    finished packing it meanwhile) is continued from the packed copy, whose lines are the same.
    """
    try:
        yield from _packed_lines(path, skip=0)
        return
    except _NotPacked:
        pass
    done = 0
    try:
        with path.open("rb") as fh:
            for line in iter_lines(fh):
                yield line
                done += 1
        return
    except FileNotFoundError:
        pass
    try:
        yield from _packed_lines(path, skip=done)
    except _NotPacked:
        raise FileNotFoundError(f"no part file at {path} (nor {packed_path(path).name})") from None


class _NotPacked(Exception):
    pass


def _packed_lines(path: Any, *, skip: int) -> Iterator[bytes]:
    try:
        raw = packed_path(path).open("rb")
    except FileNotFoundError:
        raise _NotPacked from None
    with raw, gzip.GzipFile(fileobj=raw, mode="rb") as fh:
        for number, line in enumerate(iter_lines(fh)):
            if number >= skip:
                yield line


def pack(path: Any) -> bool:
    """Store ``path`` as ``<name>.gz`` and remove it; False when ``path`` is not there (already
    packed, or never written). A crash between the two steps leaves both, which readers and the
    next call handle; two packers of one file write the same bytes."""
    try:
        source = path.open("rb")
    except FileNotFoundError:
        return False
    try:
        with (
            source,
            atomic_write(packed_path(path)) as out,
            gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=_LEVEL, mtime=0) as gz,
        ):
            shutil.copyfileobj(source, gz, _COPY_BLOCK)
    except FileNotFoundError:
        # Removed under this read by another packer, which wrote the packed copy first; this
        # one's copy was discarded unpublished.
        return False
    local = local_path(path)
    with contextlib.suppress(FileNotFoundError):  # another packer removed it first
        if local is not None:
            local.unlink()
        else:
            path.unlink()
    return True


def pack_parts(parts: Iterable[Any]) -> int:
    """Pack each part file and its ids sidecar (see the module's invariants); the number of files
    packed now. Best effort: packing saves space only, so a file that cannot be packed (a storage
    error) is left plain, where every reader still finds it, with a warning."""
    done = 0
    for part in parts:
        for path in (part, part_ids_path(part)):
            try:
                done += pack(path)
            except Exception as exc:
                log.warning("Could not pack %s, left as it is (%s: %s)", path, type(exc).__name__, exc)
    return done


__all__ = [
    "PACKED_SUFFIX",
    "iter_part_lines",
    "pack",
    "pack_parts",
    "packed_path",
    "part_ids_path",
]
