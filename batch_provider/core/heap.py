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


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Freeze the objects alive now for the duration of the block, then unfreeze them.

    Does nothing when the collector is off or something else already froze objects (a forking
    executor freezes its heap before forking): unfreezing would release its objects too. Nesting
    is a no-op for the inner block for the same reason.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
