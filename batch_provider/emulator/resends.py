"""Which requests met a transient item error before: what makes a resubmission able to recover.

A client retrying failed rows sends them again in a new batch, usually under a new custom_id
(key, recordId), so the emulator recognises a resubmission by its *content*: the request without
its id (OpenAI ``body``, Anthropic ``params``, Gemini ``request``, Bedrock ``modelInput``),
hashed per provider. This history keeps, for each content, the batches (by the provider's
creation ``seq``) in which it was given a transient item error (429, 500, 503, 504, 529);
:func:`.faults.item_error_code` turns their number into the decision.

Invariants:
- A request's history is what happened in batches created *before* its own (lower ``seq``), so
  building a batch's plan again (after a restart, or in any order) gives the same answer.
- Noting the same (content, batch) twice counts once: rebuilding a plan adds nothing.
- The history lives in ``<data dir>/resends.jsonl``, one line per note, appended; a restart reads
  it back and ``POST /_emu/reset`` empties it.
- Only transient errors are noted (and only their contents hashed), so requests that never
  failed cost nothing here.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .faults import TRANSIENT_ITEM_CODES, BatchFaults, item_error_code

FILE_NAME = "resends.jsonl"

ItemCode = Callable[[str, BatchFaults, "int | None", Any], "int | None"]
"""(custom_id, batch faults, explicit code, request content) → the item's error code or None."""


def first_sightings(seed: int) -> ItemCode:
    """Item codes without a history: every request as if sent for the first time."""
    return lambda custom_id, faults, explicit, _payload: item_error_code(seed, custom_id, faults, explicit)


def content_key(provider: str, payload: Any) -> str:
    """A stable digest of one request's content (its id left out by the caller) for ``provider``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return f"{provider}:{digest}"


class ResendHistory:
    """The batches in which each request content met a transient item error; thread-safe (plans
    are built in worker threads)."""

    def __init__(self, root: Path) -> None:
        self.path = root / FILE_NAME
        self._lock = threading.Lock()
        self._seqs: dict[str, list[int]] = {}
        if self.path.exists():
            for raw in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    note = json.loads(raw)
                    self._remember(str(note["k"]), int(note["s"]))

    def _remember(self, key: str, seq: int) -> bool:
        seqs = self._seqs.setdefault(key, [])
        at = bisect.bisect_left(seqs, seq)
        if at < len(seqs) and seqs[at] == seq:
            return False
        seqs.insert(at, seq)
        return True

    def resent(self, key: str, seq: int) -> int:
        """How many batches created before batch ``seq`` gave content ``key`` a transient error."""
        with self._lock:
            return bisect.bisect_left(self._seqs.get(key, []), seq)

    def note(self, key: str, seq: int, code: int) -> None:
        """Record that content ``key`` met transient error ``code`` in batch ``seq`` (once per batch)."""
        with self._lock:
            if self._remember(key, seq):
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"k": key, "s": seq, "c": code}, separators=(",", ":")) + "\n")

    def item_code(
        self,
        *,
        provider: str,
        seq: int,
        payload: Any,
        seed: int,
        custom_id: str,
        faults: BatchFaults,
        explicit: int | None,
        recovery: float,
    ) -> int | None:
        """The injected item error (or None) of one request of batch ``seq`` of ``provider``; a
        transient one is noted. Only a request given a transient error has its content hashed: a
        history can take that error away, never add one."""
        code = item_error_code(seed, custom_id, faults, explicit)
        if code not in TRANSIENT_ITEM_CODES:
            return code
        key = content_key(provider, payload)
        resent = self.resent(key, seq)
        if resent:
            code = item_error_code(
                seed, custom_id, faults, explicit, content=key, resent=resent, recovery=recovery
            )
        if code is not None:
            self.note(key, seq, code)
        return code

    def for_batch(self, provider: str, seq: int, seed: int, recovery: float) -> ItemCode:
        """:meth:`item_code` for the requests of batch ``seq`` of ``provider``."""

        def code(custom_id: str, faults: BatchFaults, explicit: int | None, payload: Any) -> int | None:
            return self.item_code(
                provider=provider,
                seq=seq,
                payload=payload,
                seed=seed,
                custom_id=custom_id,
                faults=faults,
                explicit=explicit,
                recovery=recovery,
            )

        return code

    def clear(self) -> None:
        with self._lock:
            self._seqs.clear()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
