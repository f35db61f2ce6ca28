"""The batch registry every provider state machine keeps its records in.

A provider's batches (OpenAI batches, Anthropic message batches, Bedrock jobs, Gemini batches) are
small dataclass records, persisted one JSON document each under ``<data dir>/<provider>``::

    <provider>/<id><META_SUFFIX>     the record (``dataclasses.asdict``), rewritten whole on change
    <provider>/<id><INPUT_SUFFIX>    the batch's own copy of its input (requests, records)

:class:`BatchRegistry` holds the records by id and in creation order, loads them back at start,
saves them, forgets them and clears them. What a record means (its timeline, views, outputs,
listing rules) stays in the provider's subclass.

Invariants:
- ``order`` holds the id of every record indexed since the last :meth:`~BatchRegistry.clear`, by ``seq``,
  oldest first (records loaded at start come in ``seq`` order); ``pos[id]`` is the id's index in
  ``order``. A forgotten record leaves ``records`` but keeps its place in ``order``, so a page
  cursor naming it still finds its neighbours.
- ``_seq`` is at least the ``seq`` of every record indexed, and never goes down (``clear`` keeps
  it); a new record takes its ``seq`` from :meth:`~BatchRegistry.next_seq`, reserved at once, so
  creates that overlap (one awaiting its input copy while another starts) never share one.
- Saving a record also saves the clock, so a restart resumes at or after the record's last change.
- A record file that does not parse as the record type is skipped at load, and left on disk.
"""

from __future__ import annotations

import bisect
import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from .store import write_json

if TYPE_CHECKING:
    from .store import Store


class BatchRecord(Protocol):
    """What the registry needs of a record: a dataclass with a unique ``id`` and a creation ``seq``."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def id(self) -> str: ...

    @property
    def seq(self) -> int: ...


R = TypeVar("R", bound=BatchRecord)
Registry = TypeVar("Registry", bound="BatchRegistry[Any]")


class BatchRegistry(Generic[R]):
    """One provider's records, by id and in creation order, persisted under ``<data dir>/<PROVIDER>``.

    A subclass names its ``PROVIDER`` (folder, stats key and ``Store`` attribute), ``RECORD_TYPE``,
    ``META_GLOB`` (matches its record files and nothing else in the folder), ``META_SUFFIX`` and
    ``INPUT_SUFFIX``. It sets up whatever its :meth:`_index` uses before calling ``__init__``, which
    loads the saved records.
    """

    PROVIDER: str
    RECORD_TYPE: type[R]
    META_GLOB: str
    META_SUFFIX = ".json"
    INPUT_SUFFIX: str

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cfg = store.config
        self.dir = store.root / self.PROVIDER
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, R] = {}
        self.order: list[str] = []
        self._order_seqs: list[int] = []
        self.pos: dict[str, int] = {}
        self._seq = 0
        for rec in sorted(self._load(), key=lambda r: r.seq):
            self._index(rec)

    def _load(self) -> Iterator[R]:
        for meta in self.dir.glob(self.META_GLOB):
            with contextlib.suppress(ValueError, TypeError):
                yield self.RECORD_TYPE(**json.loads(meta.read_text()))

    def _index(self, rec: R) -> None:
        self._seq = max(self._seq, rec.seq)
        self.records[rec.id] = rec
        # Overlapping creates may be indexed out of their ``seq`` order (each awaits its input
        # first): keep ``order`` sorted by ``seq``, as a restart would rebuild it.
        at = bisect.bisect_right(self._order_seqs, rec.seq)
        self.order.insert(at, rec.id)
        self._order_seqs.insert(at, rec.seq)
        for j in range(at, len(self.order)):
            self.pos[self.order[j]] = j

    def next_seq(self) -> int:
        """The ``seq`` of a record about to be created (one past every ``seq`` given out so far)."""
        self._seq += 1
        return self._seq

    def meta_path(self, batch_id: str) -> Path:
        return self.dir / f"{batch_id}{self.META_SUFFIX}"

    def input_path(self, batch_id: str) -> Path:
        """The batch's own copy of its input, written at create."""
        return self.dir / f"{batch_id}{self.INPUT_SUFFIX}"

    def save(self, rec: R) -> None:
        write_json(self.meta_path(rec.id), asdict(rec))
        self.store.save_clock()

    def add(self, rec: R) -> None:
        """Index a record just created, save it, and count it in ``/_emu/stats`` ``batches_created``."""
        self._index(rec)
        self.save(rec)
        self.store.stats.batches_created[self.PROVIDER] += 1

    def _remove_files(self, batch_id: str) -> None:
        for path in (self.meta_path(batch_id), self.input_path(batch_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def forget(self, batch_id: str) -> None:
        """Drop one record and its files (a deleted batch); its place in ``order`` stays."""
        self.records.pop(batch_id, None)
        self._remove_files(batch_id)

    def clear(self) -> None:
        """Drop every record and its files (``/_emu/reset``); subclasses drop their derived state too."""
        for batch_id in list(self.records):
            self._remove_files(batch_id)
        self.records.clear()
        self.order.clear()
        self._order_seqs.clear()
        self.pos.clear()

    def older_than(self, after_id: str | None, limit: int) -> tuple[list[R], bool]:
        """Newest first, at most ``limit`` records created before ``after_id`` (all when None), and
        whether older ones remain. An ``after_id`` never indexed gives an empty last page."""
        if after_id is None:
            i = len(self.order) - 1
        elif after_id in self.pos:
            i = self.pos[after_id] - 1
        else:
            return [], False
        items: list[R] = []
        while i >= 0 and len(items) < limit:
            rec = self.records.get(self.order[i])
            if rec is not None:
                items.append(rec)
            i -= 1
        return items, any(self.order[j] in self.records for j in range(i, -1, -1))

    def newer_than(self, before_id: str, limit: int) -> tuple[list[R], bool]:
        """Newest first, the ``limit`` records created right after ``before_id``, and whether newer
        ones remain. A ``before_id`` never indexed gives an empty page."""
        if before_id not in self.pos:
            return [], False
        i = self.pos[before_id] + 1
        items: list[R] = []
        while i < len(self.order) and len(items) < limit:
            rec = self.records.get(self.order[i])
            if rec is not None:
                items.append(rec)
            i += 1
        return list(reversed(items)), any(batch_id in self.records for batch_id in self.order[i:])


def attach(store: Store, registry_type: type[Registry]) -> Registry:
    """The ``registry_type`` of ``store``, created on first use as ``store.<PROVIDER>``; once
    created, ``store.reset`` (``/_emu/reset``) clears it too. Calling it again returns the same one."""
    existing = getattr(store, registry_type.PROVIDER, None)
    if isinstance(existing, registry_type):
        return existing
    registry = registry_type(store)
    setattr(store, registry_type.PROVIDER, registry)
    reset = store.reset

    def reset_and_clear() -> None:
        reset()
        registry.clear()

    store.reset = reset_and_clear  # type: ignore[method-assign]
    return registry
