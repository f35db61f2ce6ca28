"""The result cache's segments, on the local disk and on S3 (moto's server on loopback): hits and
misses, TTL, torn objects never hit, concurrent writers lose nothing, the per-entry layout is still
read and can be migrated, and the objects written do not grow with the rows."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch_provider.core.cache import ResultCache
from batch_provider.core.cache_segments import INDEXES, SEGMENTS, SegmentWriter
from batch_provider.core.models import ItemStatus, ResultError, ResultRecord, Usage


def key_of(i: int) -> str:
    return f"{i:064x}"


def record(i: int) -> ResultRecord:
    return ResultRecord(
        custom_id=f"r{i}",
        status=ItemStatus.SUCCEEDED,
        output_text=f"answer {i}",
        usage=Usage(input_tokens=10 + i, output_tokens=3),
        model="gpt-6-luna",
        provider="openai",
        batch_id="batch_1",
    )


class Store:
    """A cache root plus raw access to its objects, so tests can tear and count them."""

    def __init__(self, root: Any, s3: Any = None, prefix: str = ""):
        self.root, self.s3, self.prefix = root, s3, prefix

    def cache(self, **kwargs: Any) -> ResultCache:
        return ResultCache(self.root, **kwargs)

    def names(self) -> list[str]:
        if self.s3 is None:
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())
        listed = self.s3.list_objects_v2(Bucket="llm", Prefix=self.prefix + "/").get("Contents", [])
        return sorted(o["Key"].removeprefix(self.prefix + "/") for o in listed)

    def read(self, name: str) -> bytes:
        if self.s3 is None:
            return (self.root / name).read_bytes()
        return self.s3.get_object(Bucket="llm", Key=f"{self.prefix}/{name}")["Body"].read()

    def write(self, name: str, data: bytes) -> None:
        if self.s3 is None:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / name).write_bytes(data)
        else:
            self.s3.put_object(Bucket="llm", Key=f"{self.prefix}/{name}", Body=data)


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[Any, str]]:
    from moto_support import aws_connection, moto_s3

    with moto_s3("llm") as (s3, endpoint):
        os.environ["AIRFLOW_CONN_MOTO_SEGMENTS"] = aws_connection(endpoint)
        try:
            yield s3, endpoint
        finally:
            os.environ.pop("AIRFLOW_CONN_MOTO_SEGMENTS", None)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(tmp_path / "cache")
    from airflow.sdk import ObjectStoragePath

    s3, _ = request.getfixturevalue("moto")
    prefix = f"cache-{request.node.name}".replace("[", "-").replace("]", "")
    return Store(ObjectStoragePath(f"s3://moto_segments@llm/{prefix}"), s3, prefix)


def test_hits_misses_and_entries_indistinguishable_from_the_stored_record(store: Store):
    writer = store.cache().segment()
    for i in range(700):
        writer.add(key_of(i), record(i))
    assert store.cache().commit_safely(writer) == 0
    wanted = [key_of(i) for i in range(650, 800)]
    found = store.cache().get_many(wanted)
    assert set(found) == {key_of(i) for i in range(650, 700)}
    assert found[key_of(651)] == record(651)
    assert store.cache().get(key_of(3), "mine") == record(3).model_copy(
        update={"custom_id": "mine", "cached": True}
    )
    assert store.cache().get(key_of(10**6), "mine") is None


def test_errored_records_are_never_stored(store: Store):
    failed = ResultRecord(
        custom_id="bad", status=ItemStatus.ERRORED, error=ResultError(type="x", message="m", retryable=True)
    )
    store.cache().put_many([(key_of(1), failed)])
    assert store.names() == [] and store.cache().get_many([key_of(1)]) == {}
    store.cache().put_many([(key_of(1), failed), (key_of(2), record(2))])
    assert set(store.cache().get_many([key_of(1), key_of(2)])) == {key_of(2)}


def test_entries_past_the_ttl_are_misses(store: Store):
    old = SegmentWriter(store.root, stored_at=datetime.now(UTC) - timedelta(hours=3))
    old.add(key_of(1), record(1))
    old.commit()
    store.cache().put_many([(key_of(2), record(2))])
    fresh = store.cache(ttl=timedelta(hours=2)).get_many([key_of(1), key_of(2)])
    assert set(fresh) == {key_of(2)}
    assert set(store.cache(ttl=timedelta(hours=4)).get_many([key_of(1), key_of(2)])) == {key_of(1), key_of(2)}
    assert set(store.cache().get_many([key_of(1)])) == {key_of(1)}  # no TTL: never expires

    assert store.cache().prune() == 0 and len(store.names()) == 4  # without a TTL nothing expires
    assert store.cache(ttl=timedelta(hours=2)).prune() == 1
    assert len(store.names()) == 2 and set(store.cache().get_many([key_of(1), key_of(2)])) == {key_of(2)}


def test_a_torn_segment_or_index_is_never_a_hit(store: Store):
    store.cache().put_many((key_of(i), record(i)) for i in range(10))
    (index,) = [n for n in store.names() if n.startswith(INDEXES)]
    (segment,) = [n for n in store.names() if n.startswith(SEGMENTS)]
    body = store.read(segment)
    # the segment cut inside entry 7: entries 0-6 still whole, 7-9 gone or partial
    cut = body.index(b'{"key":"%s"' % key_of(7).encode()) + 40
    store.write(segment, body[:cut])
    assert set(store.cache().get_many(key_of(i) for i in range(10))) == {key_of(i) for i in range(7)}
    # bytes of another entry where the index points: not this key's line, so a miss
    lines = body.splitlines(keepends=True)
    store.write(segment, b"".join([lines[1], lines[0], *lines[2:]]))
    found = store.cache().get_many(key_of(i) for i in range(10))
    assert len(lines[0]) == len(lines[1]) and set(found) == {key_of(i) for i in range(2, 10)}
    # an index cut short names nothing, nor does a whole index whose segment was never written
    store.write(segment, body)
    whole_index = store.read(index)
    store.write(index, whole_index[:-5])
    assert store.cache().get_many(key_of(i) for i in range(10)) == {}
    name = index.removeprefix(f"{INDEXES}/").removesuffix(".idx")
    never_written = name[:-4] + ("beef" if not name.endswith("beef") else "f00d")
    store.write(f"{INDEXES}/{never_written}.idx", whole_index.replace(name.encode(), never_written.encode()))
    assert store.cache().get_many(key_of(i) for i in range(10)) == {}
    store.write(index, whole_index)  # the real index whole again: every entry hits
    assert len(store.cache().get_many(key_of(i) for i in range(10))) == 10


def test_concurrent_writers_lose_no_entries(store: Store):
    def collect(worker: int) -> None:
        cache = store.cache()
        writer = cache.segment()
        for i in range(worker * 100, worker * 100 + 100):
            writer.add(key_of(i), record(i))
        assert cache.commit_safely(writer) == 0

    threads = [threading.Thread(target=collect, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.cache().get_many(key_of(i) for i in range(600))) == 600
    assert len(store.names()) == 12  # a segment and an index per writer


def test_objects_written_do_not_grow_with_rows(store: Store):
    for rows in (10, 3000):
        before = len(store.names())
        writer = store.cache().segment()
        for i in range(rows):
            writer.add(key_of(rows * 10_000 + i), record(i))
        store.cache().commit_safely(writer)
        assert len(store.names()) - before == 2
    empty = store.cache().segment()
    assert store.cache().commit_safely(empty) == 0 and len(store.names()) == 4  # nothing to store: no objects


def test_newest_entry_of_a_key_wins(store: Store):
    store.cache().put_many([(key_of(5), record(5))])
    newer = record(5).model_copy(update={"output_text": "newer"})
    store.cache().put_many([(key_of(5), newer)])
    assert store.cache().get_many([key_of(5)])[key_of(5)].output_text == "newer"


def legacy_entry(i: int, stored_at: datetime | None = None) -> bytes:
    stored = (stored_at or datetime.now(UTC)).isoformat()
    return json.dumps(
        {"stored_at": stored, "record": record(i).model_dump(mode="json", exclude_none=True)}
    ).encode()


def test_the_per_entry_layout_is_still_read_then_migrated(store: Store):
    for i in range(20):
        store.write(f"{key_of(i)[:2]}/{key_of(i)}.json", legacy_entry(i))
    store.write(f"{key_of(99)[:2]}/{key_of(99)}.json", b'{"stored_at": "cut sh')
    store.write(
        f"{key_of(98)[:2]}/{key_of(98)}.json", legacy_entry(98, datetime.now(UTC) - timedelta(days=3))
    )
    store.cache().put_many([(key_of(50), record(50))])
    wanted = [key_of(i) for i in (*range(25), 50, 98, 99)]
    found = store.cache(ttl=timedelta(days=1)).get_many(wanted)
    assert set(found) == {key_of(i) for i in (*range(20), 50)}
    assert found[key_of(7)] == record(7)

    assert store.cache().migrate_legacy() == 21  # the malformed entry is dropped, the old one kept
    assert not any(n.endswith(".json") for n in store.names())
    after = store.cache(ttl=timedelta(days=1)).get_many(wanted)
    assert after == found
    assert set(store.cache().get_many(wanted)) == {key_of(i) for i in (*range(20), 50, 98)}


def test_a_rerun_in_stored_order_reads_few_ranges(store: Store):
    writer = store.cache().segment()
    for i in range(5000):
        writer.add(key_of(i), record(i))
    store.cache().commit_safely(writer)
    cache = store.cache()
    for at in range(0, 5000, 512):
        assert len(cache.get_many(key_of(i) for i in range(at, min(at + 512, 5000)))) == min(512, 5000 - at)
    assert cache.segment_reads <= 2, "a re-run is read ahead, not one request per block"
    scattered = store.cache()
    assert len(scattered.get_many(key_of(i) for i in range(0, 5000, 97))) == len(range(0, 5000, 97))
    assert scattered.segment_reads == 1  # one block: nearby hits share one ranged read
