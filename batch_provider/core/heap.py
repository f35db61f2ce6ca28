"""Keep the collector's full passes off the objects a long per-row pass finds already alive.

A run's per-row passes (intake and split, collect) allocate a few container objects per row. Every
few tens of thousands of rows the cyclic collector runs a full pass, which walks every tracked
object of the process: the worker's whole heap (Airflow, the DAG, the input rows) rather than the
few objects the pass itself keeps. Freezing the heap for the pass (``gc.freeze``) leaves those
objects out of every collection until the pass ends; objects the pass creates are collected as
usual, so cyclic garbage it makes is still freed during it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["heap_frozen"]


_depth = 0
"""Blocks of :func:`heap_frozen` open now, in any thread or task of the process."""


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Freeze the objects alive now for the duration of the block, then unfreeze them.

    Blocks nest: an inner block also freezes what the outer one has made since (e.g. the input
    rows), and the heap is unfrozen when the last open block ends. Does nothing when the
    collector is off, or when something else froze objects (a forking executor freezes its heap
    before forking), since unfreezing would release its objects too.
    """
    global _depth
    if not gc.isenabled() or (_depth == 0 and gc.get_freeze_count()):
        yield
        return
    gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
