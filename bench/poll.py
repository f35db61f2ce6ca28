"""Poll many in-progress batches from one event loop, as a triggerer does, and measure the loop.

Creates ``--batches`` in-progress Anthropic (or OpenAI) batches in a fresh emulator, then for each
client runs two patterns and prints polls/s and event-loop lag (p50/p99/max, from a ticker task
that sleeps 10 ms and records how late it wakes):

- ``burst``: every batch polled at once, ``--rounds`` times (the worst case: all first polls due);
- ``steady``: one poller per batch, first poll jittered over ``--interval``, then every
  ``--interval`` seconds for ``--duration`` seconds (the triggerer's steady state).

Clients: ``backend`` (``status()`` through the backend, i.e. the transport policy and state
mapping), ``httpx2`` (the ideal loop: bare ``httpx2.AsyncClient`` GETs of the same URL with the
same pool size) and ``httpx`` (the same with httpx 0.28, on ``--httpx-batches`` batches only,
since its pool degrades with the number of queued requests).

    .venv/bin/python bench/poll.py --batches 10000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import httpx2

from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.backends.transport import TransportPolicy
from batch_provider.core.contract import BatchBackend
from batch_provider.emulator.process import running_emulator

KEY = "sk-bench-key"


@dataclass
class Figures:
    client: str
    pattern: str
    batches: int
    polls: int
    errors: int
    seconds: float
    lags_ms: list[float]

    @property
    def polls_per_s(self) -> float:
        return self.polls / self.seconds if self.seconds else 0.0

    def row(self, ideal: float | None) -> str:
        lags = sorted(self.lags_ms) or [0.0]
        p50 = statistics.median(lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        ratio = f"{self.polls_per_s / ideal:5.2f}" if ideal else "   - "
        return (
            f"{self.client:8} {self.pattern:7} {self.batches:7d} {self.polls:8d} {self.errors:6d} "
            f"{self.polls_per_s:9.0f} {ratio}  {p50:8.1f} {p99:8.1f} {max(lags):8.1f}"
        )


class Ticker:
    """Measures event-loop lag: how late a 10 ms sleep wakes up."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags_ms.append(max(0.0, (time.perf_counter() - start - self.period) * 1000))

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def create_batches(base_url: str, provider: str, count: int) -> list[str]:
    """``count`` single-request batches, created 64 at a time (setup, not measured)."""
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    if provider == "anthropic":
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    else:
        headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx2.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:
        file_id = None
        if provider == "openai":
            line = (
                b'{"custom_id":"p-0","method":"POST","url":"/v1/chat/completions","body":'
                b'{"model":"gpt-6-luna","messages":[{"role":"user","content":"hi"}]}}\n'
            )
            up = await client.post("/v1/files", files={"file": ("in.jsonl", line)}, data={"purpose": "batch"})
            up.raise_for_status()
            file_id = up.json()["id"]
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> str:
            async with gate:
                if provider == "anthropic":
                    body: dict[str, Any] = {
                        "requests": [
                            {
                                "custom_id": f"p-{i}",
                                "params": {
                                    "model": "claude-haiku-4-5",
                                    "max_tokens": 8,
                                    "messages": [{"role": "user", "content": "hi"}],
                                },
                            }
                        ]
                    }
                    response = await client.post("/v1/messages/batches", json=body)
                else:
                    body = {
                        "input_file_id": file_id,
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    }
                    response = await client.post("/v1/batches", json=body)
                response.raise_for_status()
                return response.json()["id"]

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def status_path(provider: str, batch_id: str) -> str:
    return f"/v1/messages/batches/{batch_id}" if provider == "anthropic" else f"/v1/batches/{batch_id}"


async def run_pattern(
    client_name: str,
    pattern: str,
    batch_ids: list[str],
    poll: Callable[[str], Awaitable[Any]],
    *,
    rounds: int,
    interval: float,
    duration: float,
) -> Figures:
    polls = 0
    errors = 0

    async def guarded(batch_id: str) -> None:
        nonlocal polls, errors
        try:
            await poll(batch_id)
            polls += 1
        except Exception:
            errors += 1

    with Ticker() as ticker:
        started = time.perf_counter()
        if pattern == "burst":
            for _ in range(rounds):
                await asyncio.gather(*(guarded(b) for b in batch_ids))
        else:
            stop_at = started + duration

            async def poller(batch_id: str) -> None:
                await asyncio.sleep(random.random() * interval)
                while time.perf_counter() < stop_at:
                    began = time.perf_counter()
                    await guarded(batch_id)
                    await asyncio.sleep(max(0.0, interval - (time.perf_counter() - began)))

            await asyncio.gather(*(poller(b) for b in batch_ids))
        seconds = time.perf_counter() - started
    return Figures(client_name, pattern, len(batch_ids), polls, errors, seconds, ticker.lags_ms)


async def bench(args: argparse.Namespace, base_url: str) -> list[tuple[Figures, float | None]]:
    provider = args.provider
    print(f"creating {args.batches} in-progress {provider} batches …", flush=True)
    t0 = time.perf_counter()
    batch_ids = await create_batches(base_url, provider, args.batches)
    print(f"  created in {time.perf_counter() - t0:.1f}s", flush=True)
    policy = TransportPolicy(
        max_connections=args.connections,
        max_keepalive_connections=args.keepalive,
        max_in_flight=args.in_flight or None,
    )
    api_base = base_url + "/v1" if provider == "openai" else base_url
    backend: BatchBackend = (
        AnthropicBackend(KEY, api_base, policy=policy)
        if provider == "anthropic"
        else OpenAIBackend(KEY, api_base, policy=policy)
    )
    headers = (
        {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        if provider == "anthropic"
        else {"Authorization": f"Bearer {KEY}"}
    )
    pool2 = httpx2.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=policy.timeout(),
        limits=policy.limits(),
    )
    pool1 = httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(connect=10, read=120, write=120, pool=120),
        limits=httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.keepalive),
    )

    async def via_backend(batch_id: str) -> Any:
        return await backend.status(batch_id)

    async def via_httpx2(batch_id: str) -> Any:
        response = await pool2.get(status_path(provider, batch_id))
        response.raise_for_status()
        return response.json()

    async def via_httpx(batch_id: str) -> Any:
        response = await pool1.get(status_path(provider, batch_id))
        response.raise_for_status()
        return response.json()

    results: list[tuple[Figures, float | None]] = []
    try:
        for pattern in args.patterns:
            kw = {"rounds": args.rounds, "interval": args.interval, "duration": args.duration}
            # Warm both pools so connection setup is not measured.
            await asyncio.gather(*(via_httpx2(b) for b in batch_ids[: args.connections]))
            await asyncio.gather(*(via_backend(b) for b in batch_ids[: args.connections]))
            ideal = await run_pattern("httpx2", pattern, batch_ids, via_httpx2, **kw)
            print(f"  {pattern}: ideal httpx2 done", flush=True)
            ours = await run_pattern("backend", pattern, batch_ids, via_backend, **kw)
            print(f"  {pattern}: backend done", flush=True)
            results.append((ideal, None))
            results.append((ours, ideal.polls_per_s))
            if args.httpx_batches:
                subset = batch_ids[: args.httpx_batches]
                small_ideal = await run_pattern("httpx2", pattern, subset, via_httpx2, **kw)
                try:
                    old = await asyncio.wait_for(
                        run_pattern("httpx", pattern, subset, via_httpx, **kw), timeout=args.httpx_timeout
                    )
                except TimeoutError:
                    print(f"  {pattern}: httpx 0.28 did not finish in {args.httpx_timeout}s", flush=True)
                else:
                    results.append((small_ideal, None))
                    results.append((old, small_ideal.polls_per_s))
                print(f"  {pattern}: httpx 0.28 done", flush=True)
    finally:
        await backend.aclose()
        await pool2.aclose()
        await pool1.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--provider", choices=["anthropic", "openai"], default="anthropic")
    parser.add_argument("--patterns", nargs="+", choices=["burst", "steady"], default=["burst", "steady"])
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds")
    parser.add_argument(
        "--interval", type=float, default=30.0, help="steady: seconds between polls of a batch"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="steady: seconds per client")
    parser.add_argument("--connections", type=int, default=100, help="pool size, same for every client")
    parser.add_argument(
        "--keepalive", type=int, default=20, help="idle connections kept, same for every client"
    )
    parser.add_argument(
        "--in-flight", type=int, default=20, help="backend transport's max_in_flight (0: unbounded)"
    )
    parser.add_argument(
        "--httpx-batches", type=int, default=1000, help="batches for the httpx 0.28 run (0: skip)"
    )
    parser.add_argument("--httpx-timeout", type=float, default=120.0)
    args = parser.parse_args()

    extra = ["--processing-seconds", "100000000", "--validating-seconds", "0", "--log-level", "warning"]
    with running_emulator(time_factor=1.0, extra_args=extra) as emu:
        results = asyncio.run(bench(args, emu.base_url))
    print()
    print(
        f"{'client':8} {'pattern':7} {'batches':>7} {'polls':>8} {'errors':>6} {'polls/s':>9} ratio  "
        f"{'lag p50':>8} {'lag p99':>8} {'lag max':>8}  (ms; ratio = polls/s ÷ ideal httpx2 loop)"
    )
    for figures, ideal in results:
        print(figures.row(ideal))


if __name__ == "__main__":
    main()
