"""Gemini batch input: the create body checked (the synchronous 400s), its requests copied into the
batch's input copy, read back in input order, and planned once (how many, which fail and why).

The input copy holds one compact JSON line per request: ``{"metadata", "request"}`` for inline
requests, ``{"key", "request"}`` for the lines of an uploaded file.

Invariants:
- :func:`check_create` refuses a body before the batch exists; an empty inline request list, a
  missing input file or an inline entry without ``request`` are refused by the create afterwards,
  and a bad line of an uploaded file fails the batch in validation instead.
- A plan depends only on the config, the input copy and the batch's faults, never on time:
  building it again gives the same plan.
- Requests are indexed in input order, blank lines skipped. The first request's key adds its fault
  directives to the batch's; any key may name its own failure (``emu-fail<code>-``).
- A request the model would refuse (:func:`.outputs.request_problem`) fails with a 400,
  whatever fault would have been injected; the injected ones are counted in ``injected``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EmulatorConfig
from ..faults import BatchFaults, FaultSyntaxError, directive_id, parse_batch_faults, parse_custom_id
from ..resends import ItemCode, first_sightings
from .files import invalid
from .outputs import ITEM_STATUS, request_problem


@dataclass(frozen=True)
class CreateRequest:
    """A create body that passed :func:`check_create`."""

    display_name: str
    faults: BatchFaults
    """From an ``emu_faults=<directives>`` token of ``displayName``, before the server-wide batch
    faults are merged in."""
    file_name: str | None
    """``inputConfig.fileName``; exactly one of it and ``inline`` is set."""
    inline: Any
    """``inputConfig.requests.requests``, not checked yet."""


def check_create(body: Any, display_name_max: int, expire_done_fraction: float) -> CreateRequest:
    """``body`` checked, field by field: a 400 INVALID_ARGUMENT on the first problem."""
    if not isinstance(body, dict) or not isinstance(body.get("batch"), dict):
        raise invalid("* BatchGenerateContentRequest.batch: batch is required")
    batch = body["batch"]
    name = str(batch.get("displayName") or "")
    if len(name) > display_name_max:
        raise invalid(f"* batch.display_name: must be at most {display_name_max} characters")
    directive = next((t.partition("=")[2] for t in name.split() if t.startswith("emu_faults=")), "")
    try:
        faults = parse_batch_faults(directive, expire_done_fraction)
    except FaultSyntaxError as exc:
        raise invalid(f"bad emu_faults directive in displayName: {exc}") from None
    source = batch.get("inputConfig")
    if not isinstance(source, dict):
        raise invalid("* batch.input_config: input_config is required")
    file_name = source.get("fileName")
    inline = (
        (source.get("requests") or {}).get("requests") if isinstance(source.get("requests"), dict) else None
    )
    if (file_name is None) == (inline is None):
        raise invalid("* batch.input_config: exactly one of file_name or requests must be set")
    return CreateRequest(name, faults, str(file_name) if file_name is not None else None, inline)


@dataclass
class Plan:
    """What the state machine derives from a batch's requests, built once by :func:`build_plan`."""

    n: int = 0
    fail: dict[int, tuple[int, str]] = field(default_factory=dict)
    """index → (HTTP code, message) of requests that end with an error."""
    faults: BatchFaults = field(default_factory=BatchFaults)
    injected: Counter[str] = field(default_factory=Counter)

    def errors_before(self, k: int) -> int:
        return sum(1 for i in self.fail if i < k)


def _line(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def write_inline(path: Path, inline: list[Any]) -> int:
    """Write inline requests to the input copy ``path``; returns how many. An entry without a
    ``request`` is a 400, raised with the entries before it already written."""
    n = 0
    with path.open("wb") as fh:
        for i, entry in enumerate(inline):
            if not isinstance(entry, dict) or "request" not in entry:
                raise invalid(f"* batch.input_config.requests.requests[{i}].request: request is required")
            fh.write(_line({"metadata": entry.get("metadata"), "request": entry["request"]}))
            n += 1
    return n


def copy_file(src: Path, path: Path, input_file: str) -> tuple[int, str | None]:
    """Copy the lines of the uploaded file ``src`` (named ``input_file``) to the input copy ``path``:
    (requests copied, why the batch fails validation or None). A bad line stops the copy."""
    n = 0
    with src.open("rb") as fh, path.open("wb") as out:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                return n, f"Line {number} of {input_file} is not valid JSON."
            if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                return n, f"Line {number} of {input_file} has no 'request' object."
            out.write(_line({"key": entry.get("key"), "request": entry["request"]}))
            n += 1
    if n == 0:
        return n, f"The input file {input_file} holds no requests."
    return n, None


def read_entries(path: Path) -> Iterator[dict[str, Any]]:
    """The requests of the input copy ``path`` in input order (none when it was never written)."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                yield json.loads(raw)


def _key_of(entry: dict[str, Any]) -> str:
    key = entry.get("key")
    if key is None:
        key = (entry.get("metadata") or {}).get("key") if isinstance(entry.get("metadata"), dict) else None
    return str(key) if key is not None else ""


def build_plan(
    path: Path, faults: BatchFaults, cfg: EmulatorConfig, item_code: ItemCode | None = None
) -> Plan:
    """The plan of the input copy ``path`` of a batch with ``faults`` (reads the whole copy);
    ``item_code`` decides each request's injected error (default: as if sent for the first time)."""
    plan = Plan(faults=faults)
    pick_code = item_code or first_sightings(cfg.seed)
    for idx, entry in enumerate(read_entries(path)):
        plan.n += 1
        key = _key_of(entry)
        explicit, tokens = parse_custom_id(directive_id(key, entry.get("request")), cfg.expire_done_fraction)
        if idx == 0:
            plan.faults = plan.faults.merged(tokens)
        problem = request_problem(entry.get("request"))
        code = pick_code(key or str(idx), plan.faults, explicit, entry.get("request"))
        if problem is not None:
            plan.fail[idx] = (400, problem)
        elif code is not None:
            plan.injected[f"item_{code}"] += 1
            plan.fail[idx] = (code, f"{ITEM_STATUS[code][0]} (emulated fault, status {code}).")
    return plan
