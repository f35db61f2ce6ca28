"""Emulator benchmark: status-poll throughput and a 1 GB streamed results download.

Starts the emulator as a real process (one uvicorn worker), then
1. polls ``GET /v1/batches/{id}`` (round-robin over many batches) for ``--seconds`` and reports
   requests/s against the 1,000 req/s target, twice: with an httpx2 async client (bounded pool, as
   an SDK-like client sees it) and with a minimal raw-socket keep-alive client (the server's own
   capacity: a Python HTTP client spends more CPU per request than the emulator does, and both
   share this machine's two cores). The emulator's CPU time per request is printed for both;
2. creates synthetic batches (``POST /_emu/synthetic``) whose results are generated on the fly
   (Anthropic results stream, OpenAI output file), streams ``--gb`` gigabytes of each, and reports
   MB/s and the emulator's peak RSS (``VmHWM`` from ``/proc/<pid>/status``).

Usage: ``.venv/bin/python bench/emulator.py [--quick] [--seconds 10] [--gb 1] [--concurrency 32]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import httpx2

from batch_provider.emulator.process import EmulatorProcess, running_emulator

TARGET_RPS = 1000.0
AUTH = {"Authorization": "Bearer bench"}


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def create_batches(emu: EmulatorProcess, count: int) -> list[str]:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-6-luna", "messages": [{"role": "user", "content": f"hello {i}"}]},
        }
        for i in range(20)
    ]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    ids = []
    with httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=30) as client:
        fid = client.post(
            "/v1/files", files={"file": ("in.jsonl", io.BytesIO(data))}, data={"purpose": "batch"}
        ).json()["id"]
        for _ in range(count):
            body = {"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            ids.append(client.post("/v1/batches", json=body).json()["id"])
    return ids


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def raw_poll(port: int, ids: list[str], seconds: float, concurrency: int) -> tuple[int, int, float]:
    """Keep-alive HTTP/1.1 GETs over plain sockets: almost no client-side overhead."""
    ok = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal ok, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = w
        while time.perf_counter() < deadline:
            writer.write(
                f"GET /v1/batches/{ids[i % len(ids)]} HTTP/1.1\r\nHost: bench\r\n"
                "Authorization: Bearer bench\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                ok += 1
            else:
                errors += 1
            i += concurrency
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return ok, errors, time.perf_counter() - start


async def poll(base_url: str, ids: list[str], seconds: float, concurrency: int) -> tuple[int, int, float]:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = errors = 0
    async with httpx2.AsyncClient(base_url=base_url, headers=AUTH, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker(w: int) -> None:
            nonlocal ok, errors
            i = w
            while time.perf_counter() < deadline:
                r = await client.get(f"/v1/batches/{ids[i % len(ids)]}")
                if r.status_code == 200:
                    ok += 1
                else:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return ok, errors, elapsed


def stream_results(
    emu: EmulatorProcess, provider: str, gigabytes: float, text_bytes: int = 10_000
) -> tuple[int, float, int]:
    """Create a synthetic batch of about ``gigabytes`` GB of results and stream them once."""
    n = max(1, int(gigabytes * 1e9 / (text_bytes + 330)))
    with httpx.Client(base_url=emu.base_url, timeout=300) as client:
        spec = {"provider": provider, "requests": n, "text_bytes": text_bytes}
        info = client.post("/_emu/synthetic", json=spec).json()
        if provider == "openai":
            url, headers = f"/v1/files/{info['output_file_id']}/content", AUTH
        else:
            url, headers = info["results_url"], {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
        total = 0
        start = time.perf_counter()
        with client.stream("GET", url, headers=headers) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_raw(1 << 20):
                total += len(chunk)
        return total, time.perf_counter() - start, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s of polling and a 100 MB stream")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batches", type=int, default=200, help="batches to poll round-robin")
    ap.add_argument("--stream", choices=("anthropic", "openai", "both"), default="both")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.gb, args.batches = 2.0, 0.1, 50

    with running_emulator(time_factor=600.0) as emu:
        assert emu.pid is not None
        ids = create_batches(emu, args.batches)
        rss0 = vm_kib(emu.pid, "VmRSS")
        runs = [
            ("httpx2", lambda: asyncio.run(poll(emu.base_url, ids, args.seconds, args.concurrency))),
            ("raw sockets", lambda: asyncio.run(raw_poll(emu.port, ids, args.seconds, args.concurrency))),
        ]
        for name, run in runs:
            cpu0 = cpu_seconds(emu.pid)
            ok, errors, elapsed = run()
            server_cpu = cpu_seconds(emu.pid) - cpu0
            rps = ok / elapsed
            print(
                f"status polls [{name}]: {ok} ok, {errors} errors in {elapsed:.1f} s, {len(ids)} batches, "
                f"concurrency {args.concurrency}"
            )
            print(
                f"  -> {rps:,.0f} req/s ({rps / TARGET_RPS:.2f}x the {TARGET_RPS:,.0f} req/s target); "
                f"emulator CPU {1e6 * server_cpu / max(ok, 1):.0f} us/request"
            )

        for provider in ("anthropic", "openai") if args.stream == "both" else (args.stream,):
            total, secs, n = stream_results(emu, provider, args.gb)
            print(
                f"results stream [{provider}]: {total / 1e6:,.0f} MB ({n:,} results) in {secs:.1f} s "
                f"-> {total / 1e6 / secs:,.0f} MB/s"
            )
        hwm = vm_kib(emu.pid, "VmHWM")
        print(f"emulator RSS before streams {rss0 / 1024:.0f} MiB, peak RSS (VmHWM) {hwm / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
