"""Wire ids: the ids a provider sees (custom_id, Gemini ``key``, Bedrock ``recordId``), and the part
ids sidecar that maps them back to the rows' own ids.

Invariants:
- A wire id is ``bp`` + the run folder's token (12 hex digits) + ``a`` + the attempt (2 digits) +
  ``n`` + the request's position in the attempt (9 digits): 27 characters from ``[a-z0-9]``, valid
  under every provider's rule (Anthropic and Bedrock ``[a-zA-Z0-9_-]{1,64}``, Bedrock's
  "alphanumeric", OpenAI's and Gemini's 1..512 characters). All wire ids have one length, so
  swapping one for another (a retry) never changes a line's byte size.
- The token is random per run folder (:mod:`batch_provider.core.claims`), so a wire id names one
  request of one attempt of one run folder: another run's batch can never answer it, and a
  folder deleted and started over gets new ones.
- The row id (the user's ``custom_id``) never reaches the wire; it may be any string. The sidecar
  holds it JSON-encoded, so line breaks and any unicode survive.

Sidecar format (``part-NNNNN.ids``): a header line :data:`SIDECAR_HEADER`, then one line per request
in part-file order: ``1`` or ``0`` (whether it asked for JSON-schema output), the wire id, a space,
the row id as a JSON string. A sidecar without the header (written before wire ids existed) holds
``1``/``0`` + the custom_id, which was both the wire id and the row id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from batch_provider.core.jsonl import dumps_line, loads
from batch_provider.core.part_files import iter_part_lines

SIDECAR_HEADER = b"#bp-wire-ids 1"
WIRE_ID_LENGTH = 27
_MAX_POSITION = 10**9 - 1


def wire_id(token: str, attempt: int, position: int) -> str:
    """The wire id of the request at ``position`` (0-based) of ``attempt`` in the run folder of ``token``."""
    if not 0 <= position <= _MAX_POSITION or not 1 <= attempt <= 99:
        raise ValueError(f"attempt {attempt} / position {position} is outside what a wire id can hold")
    return f"bp{token}a{attempt:02d}n{position:09d}"


def swap_wire_id(line: bytes, old: str, new: str) -> bytes:
    """``line`` with its id ``old`` replaced by ``new``. The id is the first member of every native
    line this project encodes, so the first occurrence of its JSON string is the id itself (``old``
    may be a row id of a folder from before wire ids, encoded the way lines are)."""
    quoted = dumps_line(old)
    if quoted not in line:
        raise ValueError(f"id {old!r} not found in its part-file line")
    return line.replace(quoted, dumps_line(new), 1)


def sidecar_line(wants_json: bool, wire: str, row_id: str) -> bytes:
    return (b"1" if wants_json else b"0") + wire.encode() + b" " + dumps_line(row_id)


@dataclass
class PartIds:
    """The ids of one part file: wire id → wants JSON output, and wire id → row id, in file order."""

    wants: dict[str, bool] = field(default_factory=dict)
    rows: dict[str, str] = field(default_factory=dict)

    def row_ids(self) -> list[str]:
        return list(self.rows.values())


def read_sidecar(lines: Iterable[bytes]) -> PartIds:
    """Parse a sidecar's lines (either format, see the module docstring)."""
    ids = PartIds()
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        return ids
    if first.rstrip() == SIDECAR_HEADER:
        wires: list[str] = []
        rows: list[bytes] = []
        for line in iterator:
            wire, _, row = line[1:].partition(b" ")
            key = wire.decode()
            ids.wants[key] = line[:1] == b"1"
            wires.append(key)
            rows.append(row)
        # one JSON array decoded at once: a decoder call per row id costs more than the parse
        ids.rows = dict(zip(wires, loads(b"[" + b",".join(rows) + b"]"), strict=True))
        return ids
    for line in (first, *iterator):
        key = line[1:].decode()
        ids.wants[key] = line[:1] == b"1"
        ids.rows[key] = key
    return ids


def read_sidecar_file(path: Any) -> PartIds | None:
    """The sidecar at ``path`` (plain or packed, :mod:`batch_provider.core.part_files`), or None
    when there is none."""
    try:
        return read_sidecar(iter_part_lines(path))
    except FileNotFoundError:
        return None
