"""Fault injection: the grammar, and the decisions it leads to (no HTTP here).

Three levels, all deterministic for a given ``--seed`` (and, for the random rate, call order):

1. **Per request (item)**, by ``custom_id`` prefix, both providers::

       emu-fail-…        non-retryable error (400 invalid_request_error)
       emu-fail<CODE>-…  error with that status: 400, 422, 429, 500, 503, 504, 529
                         (Anthropic types: 400/422 invalid_request_error, 429 rate_limit_error,
                          500/503 api_error, 504 timeout_error, 529 overloaded_error)

2. **Per batch.** OpenAI: ``metadata["emu_faults"]`` is a comma list of directives::

       item_errors=F[:C1/C2..]  fraction F of requests error; codes default 400/429/500, picked per request
       expire[=F]               the batch cannot finish: at expires_at it expires with fraction F
                                (default 0.5) of the requests done (partial results)
       shuffle                  output/error lines (or results) in a shuffled order
       drop[=N]                 the first N downloads (default 1) of this batch's output, error or
                                results stream are cut mid-body (connection dropped)
       fail_validation[=CODE]   validating → failed with one errors.data entry of CODE
                                (default invalid_request; e.g. token_limit_exceeded)
       invalid_output=F         fraction F of the JSON answers (structured output) are invalid:
                                broken JSON, a missing field or a wrong type, picked per request
                                (:mod:`.invalid_answers`)

   Anthropic (custom_id charset has no ``=``/``,``): tokens in the *first* request's custom_id,
   after ``emu-``, read until the first token that is not a directive::

       emu-expire-…  emu-shuffle-…  emu-drop-… / emu-drop2-…  emu-errors20-… (20 % item errors)
       emu-invalid30-… (30 % of the JSON answers invalid)

   e.g. ``emu-expire-shuffle-doc-0001``. These batch tokens also work on an OpenAI file's first line.
   A token may be combined with an item token: ``emu-expire-fail500-x``.

   **Text marker.** The same tokens may instead be written anywhere in a request's line (its prompt
   text, usually) as ``[[emu:TOKENS]]``, e.g. ``Classify: … [[emu:fail500]]`` or
   ``[[emu:expire-shuffle]]``: for a request whose custom_id (Gemini ``key``, Bedrock
   ``recordId``) does not start with ``emu-``, the tokens of its first marker are read as if its
   id were ``emu-TOKENS-…``. This is how tests reach the emulator through the provider's runs,
   which send wire ids of their own (``bp…``), not the rows' ids. Every provider face honours it.

3. **Server-wide**: CLI flags and ``POST /_emu/faults`` (JSON, replaces the whole setting)::

       {"fault_rate": 0.3,                       # fraction of ALL /v1 calls answered by a random fault
        "fault_kinds": ["429","500","503","529","drop"],
        "fault_routes": ["*"],                   # globs over "METHOD /path" eligible for random faults
        "retry_after": 1,                        # seconds, for 429s
        "rules": [{"match": "POST /v1/batches", "kind": "429", "times": 2, "retry_after": 1}],
        "batch_faults": "item_errors=0.1,shuffle",   # applied to every new batch of both providers
        "item_recovery": 0.8}                    # chance a resubmitted transient item error succeeds

   HTTP fault kinds: ``429`` (retry-after), ``429_long`` (retry-after 300 s, above the SDKs' 120 s
   cap), ``quota`` (OpenAI 429 insufficient_quota / Anthropic spend-cap 429, both without
   retry-after), ``500``, ``502``, ``503``, ``504``, ``529`` (Anthropic overloaded_error; 503 on
   OpenAI routes), ``drop`` (the request takes effect, then the response is cut mid-body),
   ``reset`` (connection dropped before the request is processed).

**Transient item errors.** Item errors 429, 500, 503, 504 and 529 are transient, as real ones
are: a request sent again after one (its content, the request without its id, equal to a request
of an earlier batch that met a transient error; the custom_id may differ) escapes the transient
error it is given with probability ``item_recovery`` (default 0.8, CLI ``--item-recovery``). The
draw is deterministic in (seed, content, how many earlier batches gave that content a transient
error, custom_id); that history is kept with the emulator's state (:mod:`.resends`) and emptied
by ``POST /_emu/reset``. 400 and 422 item errors are permanent: a request given one gets it on
every sending. ``item_recovery: 0`` makes transient errors stick (each sending draws as if it
were the first). Identical requests of unrelated batches count as resubmissions too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

ITEM_CODES = (400, 422, 429, 500, 503, 504, 529)
TRANSIENT_ITEM_CODES = frozenset({429, 500, 503, 504, 529})
"""Item errors a resubmission can recover from; 400 and 422 stay whatever is sent again."""
DEFAULT_ITEM_RECOVERY = 0.8
DEFAULT_ITEM_CODES = (400, 429, 500)
HTTP_KINDS = ("429", "429_long", "quota", "500", "502", "503", "504", "529", "drop", "reset")
_ITEM_TOKEN = re.compile(r"^fail(\d{3})?$")
_BATCH_TOKEN = re.compile(r"^(expire|shuffle|drop(\d*)|errors(\d{1,3})|invalid(\d{1,3}))$")


class FaultSyntaxError(ValueError):
    pass


@dataclass
class BatchFaults:
    item_errors: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    expire: float | None = None
    shuffle: bool = False
    drop: int = 0
    fail_validation: str | None = None
    invalid_output: float | None = None
    """Share of JSON answers made invalid (a fresh draw per custom_id, so per sending)."""

    def merged(self, other: BatchFaults) -> BatchFaults:
        """``self`` (server default) overlaid with ``other`` (per batch)."""
        return BatchFaults(
            item_errors=[*self.item_errors, *other.item_errors],
            expire=other.expire if other.expire is not None else self.expire,
            shuffle=self.shuffle or other.shuffle,
            drop=max(self.drop, other.drop),
            fail_validation=other.fail_validation or self.fail_validation,
            invalid_output=other.invalid_output if other.invalid_output is not None else self.invalid_output,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "item_errors": [[f, list(c)] for f, c in self.item_errors],
            "expire": self.expire,
            "shuffle": self.shuffle,
            "drop": self.drop,
            "fail_validation": self.fail_validation,
            "invalid_output": self.invalid_output,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchFaults:
        return cls(
            item_errors=[(float(f), tuple(int(x) for x in c)) for f, c in d.get("item_errors", [])],
            expire=d.get("expire"),
            shuffle=bool(d.get("shuffle")),
            drop=int(d.get("drop", 0)),
            fail_validation=d.get("fail_validation"),
            invalid_output=d.get("invalid_output"),
        )


def parse_batch_faults(text: str | None, expire_default: float = 0.5) -> BatchFaults:
    """Parse the OpenAI ``emu_faults`` directive list. Raises :class:`FaultSyntaxError`."""
    out = BatchFaults()
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip()
        try:
            if name == "item_errors":
                frac, _, codes = value.partition(":")
                parsed = tuple(int(c) for c in codes.split("/") if c) or DEFAULT_ITEM_CODES
                if any(c not in ITEM_CODES for c in parsed):
                    raise FaultSyntaxError(f"item error codes must be among {ITEM_CODES}")
                out.item_errors.append((_fraction(frac), parsed))
            elif name == "expire":
                out.expire = _fraction(value) if value else expire_default
            elif name == "shuffle":
                out.shuffle = True
            elif name == "drop":
                out.drop = int(value) if value else 1
            elif name == "fail_validation":
                out.fail_validation = value or "invalid_request"
            elif name == "invalid_output":
                out.invalid_output = _fraction(value)
            else:
                raise FaultSyntaxError(f"unknown fault directive {name!r}")
        except (TypeError, ValueError) as exc:
            raise FaultSyntaxError(f"bad fault directive {item!r}: {exc}") from exc
    return out


def _fraction(value: str) -> float:
    f = float(value)
    if not 0.0 <= f <= 1.0:
        raise FaultSyntaxError("a fraction must be within 0..1")
    return f


_MARKER = re.compile(r"\[\[emu:([A-Za-z0-9-]+)\]\]")


def directive_id(custom_id: str, line: bytes | str | Any = None) -> str:
    """The id whose ``emu-`` tokens direct this request: ``custom_id`` itself when it has them, else
    ``emu-<tokens>-`` from the first ``[[emu:tokens]]`` marker in ``line`` (raw bytes or text; any
    other object is JSON-encoded first), else ``custom_id``."""
    if custom_id.startswith("emu-") or line is None:
        return custom_id
    if isinstance(line, bytes):
        if b"[[emu:" not in line:
            return custom_id
        text = line.decode("utf-8", "replace")
    elif isinstance(line, str):
        text = line
    else:
        text = json.dumps(line, ensure_ascii=False)
    match = _MARKER.search(text)
    return f"emu-{match.group(1)}-" if match else custom_id


def parse_custom_id(custom_id: str, expire_default: float = 0.5) -> tuple[int | None, BatchFaults]:
    """Read ``emu-`` tokens of a custom_id: (item error status or None, batch directives)."""
    faults = BatchFaults()
    code: int | None = None
    if not custom_id.startswith("emu-"):
        return None, faults
    for token in custom_id[4:].split("-"):
        m = _ITEM_TOKEN.match(token)
        if m:
            c = int(m.group(1) or 400)
            if c in ITEM_CODES:
                code = c
                continue
            break
        m = _BATCH_TOKEN.match(token)
        if not m:
            break
        if token == "expire":
            faults.expire = expire_default
        elif token == "shuffle":
            faults.shuffle = True
        elif token.startswith("drop"):
            faults.drop = int(m.group(2) or 1)
        elif token.startswith("invalid"):
            faults.invalid_output = min(int(m.group(4)), 100) / 100.0
        else:
            faults.item_errors.append((min(int(m.group(3)), 100) / 100.0, DEFAULT_ITEM_CODES))
    return code, faults


def unit_hash(seed: int, *parts: str) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(str(seed).encode())
    for p in parts:
        h.update(b"\x00")
        h.update(p.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


def item_error_code(
    seed: int,
    custom_id: str,
    faults: BatchFaults,
    explicit: int | None,
    *,
    content: str = "",
    resent: int = 0,
    recovery: float = DEFAULT_ITEM_RECOVERY,
) -> int | None:
    """The injected error status for one request, or None.

    The request's explicit code, else a draw deterministic in (seed, custom_id). When that is a
    transient code (:data:`TRANSIENT_ITEM_CODES`) and the request is a resubmission (its
    ``content`` met a transient error in ``resent`` earlier batches), it succeeds instead with
    probability ``recovery``, drawn from (seed, content, resent, custom_id). A history never
    adds an error, and a permanent code (400, 422) stays whatever is sent again.
    """
    code = _first_sighting_code(seed, custom_id, faults, explicit)
    if resent <= 0 or code not in TRANSIENT_ITEM_CODES:
        return code
    u = unit_hash(seed, "recover", content, str(resent), custom_id) / float(1 << 64)
    return None if u < recovery else code


def _first_sighting_code(seed: int, custom_id: str, faults: BatchFaults, explicit: int | None) -> int | None:
    if explicit is not None:
        return explicit
    if not faults.item_errors:
        return None
    h = unit_hash(seed, "item", custom_id)
    u = (h >> 11) / float(1 << 53)
    acc = 0.0
    for frac, codes in faults.item_errors:
        acc += frac
        if u < acc:
            return codes[h % len(codes)]
    return None


# ----------------------------------------------------------------------------- server-wide


@dataclass
class FaultRule:
    match: str
    kind: str
    times: int = 1
    retry_after: float | None = None

    def matches(self, method: str, path: str) -> bool:
        return _route_match(self.match, method, path)


def _route_match(pattern: str, method: str, path: str) -> bool:
    if pattern in ("*", ""):
        return True
    if pattern in ("openai", "anthropic"):
        if path.startswith("/v1/messages/batches"):
            return pattern == "anthropic"
        return pattern == "openai" and path.startswith("/v1/")
    if " " not in pattern:
        pattern = "* " + pattern
    return fnmatch.fnmatchcase(f"{method} {path}", pattern)


class ServerFaults:
    """Server-wide fault settings. ``pick`` consumes rules first, then draws the random rate."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.set({})

    def set(self, spec: dict[str, Any], *, defaults: dict[str, Any] | None = None) -> None:
        spec = {**(defaults or {}), **spec}
        kinds = [str(k) for k in spec.get("fault_kinds", ["429", "500", "503", "529", "drop"])]
        bad = [k for k in kinds if k not in HTTP_KINDS]
        rules = []
        for r in spec.get("rules", []):
            rule = FaultRule(
                match=str(r.get("match", "*")),
                kind=str(r["kind"]),
                times=int(r.get("times", 1)),
                retry_after=r.get("retry_after"),
            )
            if rule.kind not in HTTP_KINDS:
                bad.append(rule.kind)
            rules.append(rule)
        if bad:
            raise FaultSyntaxError(f"unknown fault kind(s) {bad}; known: {list(HTTP_KINDS)}")
        rate = float(spec.get("fault_rate", 0.0))
        if not 0.0 <= rate <= 1.0:
            raise FaultSyntaxError("fault_rate must be within 0..1")
        recovery = float(spec.get("item_recovery", DEFAULT_ITEM_RECOVERY))
        if not 0.0 <= recovery <= 1.0:
            raise FaultSyntaxError("item_recovery must be within 0..1")
        batch = str(spec.get("batch_faults") or "")
        self.batch_defaults = parse_batch_faults(batch)
        self.batch_faults = batch
        self.fault_rate = rate
        self.fault_kinds = kinds
        self.fault_routes = [str(p) for p in spec.get("fault_routes", ["*"])]
        self.retry_after = float(spec.get("retry_after", 1.0))
        self.rules = rules
        self.item_recovery = recovery
        self.rng = random.Random(self.seed)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault_rate": self.fault_rate,
            "fault_kinds": self.fault_kinds,
            "fault_routes": self.fault_routes,
            "retry_after": self.retry_after,
            "rules": [
                {"match": r.match, "kind": r.kind, "times": r.times, "retry_after": r.retry_after}
                for r in self.rules
            ],
            "batch_faults": self.batch_faults,
            "item_recovery": self.item_recovery,
        }

    def pick(self, method: str, path: str) -> tuple[str, float] | None:
        """(kind, retry_after) of the fault to inject on this call, or None."""
        for rule in self.rules:
            if rule.times > 0 and rule.matches(method, path):
                rule.times -= 1
                ra = rule.retry_after if rule.retry_after is not None else self.retry_after
                return rule.kind, float(ra)
        if self.fault_rate > 0 and self.fault_kinds:
            if not any(_route_match(p, method, path) for p in self.fault_routes):
                return None
            if self.rng.random() < self.fault_rate:
                return self.rng.choice(self.fault_kinds), self.retry_after
        return None
