"""Result-cache lookups on S3 (moto's server on loopback): one entry at a time against blocks.

Stores ``--entries`` succeeded records through :meth:`ResultCache.put_many`, then looks them up
twice in the same run: ``get`` per key (a round trip each, how a cache without blocks reads) for
``--sample`` keys, and :meth:`ResultCache.get_many` in blocks of ``CACHE_BLOCK`` for all of them.
``--latency-ms`` adds a delay to every S3 request (through a small proxy), as a real bucket is
tens of milliseconds away; moto on loopback answers in about a millisecond.

    .venv/bin/python bench/cache.py --entries 5000 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--sample", type=int, default=200, help="keys read one at a time")
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
        from batch_provider.core.models import ItemStatus, ResultRecord
        from batch_provider.core.submission import CACHE_BLOCK

        boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{moto_port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")
        cache = ResultCache(ObjectStoragePath("s3://bench_s3@bench/cache"))
        keys = [f"{i:064x}" for i in range(args.entries)]
        records = [
            ResultRecord(custom_id=f"r{i}", status=ItemStatus.SUCCEEDED, output_text="ok") for i in keys
        ]

        started = time.perf_counter()
        for at in range(0, len(keys), CACHE_BLOCK):
            cache.put_many(zip(keys[at : at + CACHE_BLOCK], records[at : at + CACHE_BLOCK], strict=True))
        put_s = time.perf_counter() - started

        sample = keys[: args.sample]
        started = time.perf_counter()
        one_hits = sum(cache.get(key, "x") is not None for key in sample)
        one_s = time.perf_counter() - started

        started = time.perf_counter()
        block_hits = 0
        for at in range(0, len(keys), CACHE_BLOCK):
            block_hits += len(cache.get_many(keys[at : at + CACHE_BLOCK]))
        block_s = time.perf_counter() - started
    finally:
        moto.kill()
        if proxy is not None:
            proxy.kill()

    assert one_hits == len(sample) and block_hits == len(keys), (one_hits, block_hits)
    one_rate, block_rate = len(sample) / one_s, len(keys) / block_s
    print(f"S3 latency added per request: {args.latency_ms:.0f} ms; blocks of {CACHE_BLOCK}")
    print(f"store   : {len(keys):,} entries in {put_s:.1f}s = {len(keys) / put_s:,.0f} entries/s")
    print(f"lookup  : one at a time {one_rate:,.0f} keys/s ({len(sample)} keys)")
    print(
        f"lookup  : blocks        {block_rate:,.0f} keys/s ({len(keys):,} keys)  "
        f"= {block_rate / one_rate:.1f}× one at a time"
    )
    print(
        f"a million lookups: {1e6 / one_rate / 60:,.0f} min one at a time, "
        f"{1e6 / block_rate / 60:,.1f} min in blocks"
    )


if __name__ == "__main__":
    main()
