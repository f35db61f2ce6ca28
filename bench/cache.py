"""Result-cache lookups on S3 (moto's server on loopback): the per-entry layout against segments.

Both layouts are written and read in the same run, against one moto server:

- **segments** (what collect writes): ``--entries`` succeeded records in ``--batches`` segments,
  one :meth:`ResultCache.segment` per batch as a collect stores them; then a new
  :class:`ResultCache` looks every key up with :meth:`ResultCache.get_many` in blocks of
  ``CACHE_BLOCK``, as submit does (index loading included);
- **per entry** (the older layout, one object per entry): ``--legacy-entries`` records written
  one object each, looked up the same way (a sample: at its speed a million would take hours).

``--latency-ms`` adds a delay to every S3 request (through a small proxy), as a real bucket is
tens of milliseconds away; moto on loopback answers in about a millisecond.

    .venv/bin/python bench/cache.py --entries 1000000 --batches 100 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch_provider.core.cache import CACHE_BLOCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def start_moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, "moto server")
    except RuntimeError:
        proc.kill()
        raise
    return proc


def _serve_delay_proxy(port: int, target_port: int, latency_s: float) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_r, server_w, latency_s), pipe(server_r, client_w, 0.0))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def start_delay_proxy(target_port: int, latency_s: float) -> tuple[int, multiprocessing.Process]:
    """A TCP proxy in its own process that holds every chunk a client sends for ``latency_s``."""
    port = free_port()
    proc = multiprocessing.Process(
        target=_serve_delay_proxy, args=(port, target_port, latency_s), daemon=True
    )
    proc.start()
    wait_for_port(port, "delay proxy", timeout=10)
    return port, proc


def write_legacy(root, keys: list[str], record_of) -> None:
    """The per-entry layout as collect used to write it: one object per entry, a block per ``pipe``."""
    stored_at = datetime.now(UTC).isoformat()
    for at in range(0, len(keys), CACHE_BLOCK):
        blobs = {
            (root / key[:2] / f"{key}.json").path: json.dumps(
                {"stored_at": stored_at, "record": record_of(key).model_dump(mode="json", exclude_none=True)}
            ).encode()
            for key in keys[at : at + CACHE_BLOCK]
        }
        root.fs.pipe(blobs)


def look_up(cache, keys: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    hits = 0
    for at in range(0, len(keys), CACHE_BLOCK):
        hits += len(cache.get_many(keys[at : at + CACHE_BLOCK]))
    return hits, time.perf_counter() - started


def count_objects(s3, prefix: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix)
    return sum(page.get("KeyCount", 0) for page in pages)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in segments")
    parser.add_argument("--batches", type=int, default=100, help="segments (collected batches)")
    parser.add_argument("--legacy-entries", type=int, default=3000, help="entries in the per-entry layout")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()

    moto_port = free_port()
    moto = start_moto(moto_port)
    proxy: multiprocessing.Process | None = None
    try:
        port, proxy = start_delay_proxy(moto_port, args.latency_ms / 1000)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": "us-east-1", "endpoint_url": endpoint},
            }
        )
        import boto3
        from airflow.sdk import ObjectStoragePath

        from batch_provider.core.cache import ResultCache
        from batch_provider.core.models import ItemStatus, ResultRecord, Usage

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{moto_port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="bench")

        def record_of(key: str) -> ResultRecord:
            return ResultRecord(
                custom_id=f"r-{key[-8:]}",
                status=ItemStatus.SUCCEEDED,
                output_text=f"label {key[-3:]}",
                usage=Usage(input_tokens=120, output_tokens=4),
                model="gpt-6-luna",
                provider="openai",
                batch_id="batch_bench",
            )

        # keys as the cache makes them: sha256 hex digests
        new_keys = [hashlib.sha256(b"new %d" % i).hexdigest() for i in range(args.entries)]
        old_keys = [hashlib.sha256(b"old %d" % i).hexdigest() for i in range(args.legacy_entries)]

        old_root = ObjectStoragePath("s3://bench_s3@bench/per-entry")
        started = time.perf_counter()
        write_legacy(old_root, old_keys, record_of)
        old_put_s = time.perf_counter() - started
        old_objects = count_objects(s3, "per-entry/")
        old_hits, old_s = look_up(ResultCache(old_root), old_keys)

        new_root = ObjectStoragePath("s3://bench_s3@bench/segments")
        per_batch = -(-args.entries // args.batches)
        started = time.perf_counter()
        writer_cache = ResultCache(new_root)
        for at in range(0, args.entries, per_batch):
            segment = writer_cache.segment()
            for key in new_keys[at : at + per_batch]:
                segment.add(key, record_of(key))
            assert writer_cache.commit_safely(segment) == 0
        new_put_s = time.perf_counter() - started
        new_objects = count_objects(s3, "segments/")
        reader = ResultCache(new_root)
        new_hits, new_s = look_up(reader, new_keys)
    finally:
        moto.kill()
        if proxy is not None:
            proxy.kill()

    assert old_hits == len(old_keys) and new_hits == len(new_keys), (old_hits, new_hits)
    old_rate, new_rate = len(old_keys) / old_s, len(new_keys) / new_s
    batches = -(-args.entries // per_batch)
    print(f"S3 latency added per request: {args.latency_ms:.0f} ms; lookups in blocks of {CACHE_BLOCK}")
    print(
        f"per entry: stored {len(old_keys):,} in {old_put_s:.1f}s, {old_objects:,} objects "
        f"({old_objects / len(old_keys):.2f} per row); looked up at {old_rate:,.0f} keys/s"
    )
    print(
        f"segments : stored {len(new_keys):,} in {new_put_s:.1f}s as {batches} batches, "
        f"{new_objects:,} objects "
        f"({new_objects / batches:.0f} per batch); looked up at {new_rate:,.0f} keys/s ({new_s:.1f}s, "
        f"{reader.segment_reads:,} ranged reads)"
    )
    print(f"lookups  : segments {new_rate / old_rate:,.0f}x the per-entry layout")
    print(
        f"a million lookups: {1e6 / old_rate / 60:,.0f} min per entry, {1e6 / new_rate / 60:,.1f} min "
        "in segments"
    )


if __name__ == "__main__":
    main()
