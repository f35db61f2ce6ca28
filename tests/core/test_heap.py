"""``heap_frozen``: the heap alive at entry is left out of collections during the block only."""

from __future__ import annotations

import gc

import pytest

from batch_provider.core.heap import heap_frozen


@pytest.fixture(autouse=True)
def _collector_restored():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_freezes_the_heap_for_the_block_and_releases_it_after() -> None:
    gc.enable()
    gc.unfreeze()
    alive = [object() for _ in range(10)]
    with heap_frozen():
        assert gc.get_freeze_count() > len(alive)
        # a cycle made inside the block is garbage the collector still frees during it
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2
    assert gc.get_freeze_count() == 0


def test_releases_the_heap_when_the_block_raises() -> None:
    gc.enable()
    gc.unfreeze()
    with pytest.raises(RuntimeError), heap_frozen():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


def test_leaves_a_heap_frozen_by_someone_else_frozen() -> None:
    """A forking executor freezes its heap before forking: leaving the block must not unfreeze it."""
    gc.enable()
    gc.freeze()
    frozen = gc.get_freeze_count()
    with heap_frozen():
        inner = gc.get_freeze_count()
    assert frozen > 0 and inner == frozen and gc.get_freeze_count() == frozen


def test_does_nothing_while_the_collector_is_off() -> None:
    gc.unfreeze()
    gc.disable()
    with heap_frozen():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_nested_blocks_freeze_what_the_outer_one_made_and_unfreeze_once() -> None:
    gc.enable()
    gc.unfreeze()
    with heap_frozen():
        outer = gc.get_freeze_count()
        made = [[] for _ in range(1000)]  # tracked containers made inside the outer block
        with heap_frozen():
            assert gc.get_freeze_count() >= outer + len(made)
        assert gc.get_freeze_count() >= outer + len(made)  # still frozen: the outer block is open
    assert gc.get_freeze_count() == 0
