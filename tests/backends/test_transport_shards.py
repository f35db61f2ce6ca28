"""A transport split over several connection pools: limits per pool, calls spread over every
pool, every pool closed with the transport; over real HTTP to the emulator."""

from __future__ import annotations

import asyncio

from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.core.poller import POLL_POLICY
from batch_provider.core.transport_policy import TransportPolicy
from batch_provider.emulator.process import EmulatorProcess


def test_each_pool_gets_its_share_of_the_limits() -> None:
    policy = TransportPolicy(max_connections=100, max_keepalive_connections=100, pool_shards=4)
    limits = policy.limits()
    assert (limits.max_connections, limits.max_keepalive_connections) == (25, 25)
    single = TransportPolicy(max_connections=10, max_keepalive_connections=5).limits()
    assert (single.max_connections, single.max_keepalive_connections) == (10, 5)


def test_the_shared_poller_splits_its_pool() -> None:
    assert POLL_POLICY.pool_shards > 1
    assert POLL_POLICY.limits().max_connections * POLL_POLICY.pool_shards <= POLL_POLICY.max_connections


async def test_calls_are_spread_over_every_pool_and_all_are_closed(emu: EmulatorProcess) -> None:
    policy = TransportPolicy(max_connections=8, max_keepalive_connections=8, max_in_flight=8, pool_shards=4)
    backend = OpenAIBackend("sk-emulator-key-123", emu.base_url + "/v1", policy=policy)
    clients = backend._http._clients
    assert len(clients) == 4
    try:
        calls = (backend.status(f"batch_missing_{i}") for i in range(16))
        statuses = await asyncio.gather(*calls, return_exceptions=True)
        assert len(statuses) == 16
        per_pool = [len(client._transport._pool.connections) for client in clients]
        assert all(1 <= n <= 2 for n in per_pool), per_pool
    finally:
        await backend.aclose()
    assert all(client.is_closed for client in clients)
