"""Many BatchWaitTriggers in one event loop share one poller and HTTP pool per endpoint and key,
against the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json

from airflow_setup import API_KEY, conn_json
from test_trigger_emulator import context, submit_op

from batch_provider.core.poller import pools_of_running_loop
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.triggers.batch import BatchWaitTrigger


async def all_registered(n: int) -> None:
    """Until every trigger holds its lease and registered its batch (connection lookups first)."""
    async with asyncio.timeout(20):
        while sum(p.poller.result().watched for p in pools_of_running_loop().values() if p.poller.done()) < n:
            await asyncio.sleep(0.01)


def status_gets(stats: dict) -> int:
    """Status calls counted by the emulator: ``GET`` of one batch, on either provider."""
    return sum(
        n
        for label, n in stats["requests"].items()
        if label.startswith("GET ") and label.rstrip("/").endswith("batches/{batch_id}")
    )


async def test_triggers_of_one_endpoint_share_one_pool(llm_conns, run_root, monkeypatch):
    # a second connection id with the same endpoint and key shares the pool: keys, not ids, decide
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_OTHER", conn_json("llm_openai", f"{llm_conns.base_url}/v1"))
    handles = {
        provider: await asyncio.to_thread(
            submit_op(provider=provider, model=model, max_requests_per_batch=5).execute,
            context(f"run_{provider}"),
        )
        for provider, model in (("openai", "gpt-6-luna"), ("anthropic", "claude-haiku-4-5"))
    }
    triggers = [
        BatchWaitTrigger(
            conn_id="openai_other" if provider == "openai" and i % 2 else handle["conn_id"],
            provider=provider,
            batch_ids=batch["batch_id"],
            poll_interval_min=0.2,
            poll_interval_max=0.5,
        )
        for provider, handle in handles.items()
        for i, batch in enumerate(handle["batches"])
    ]
    assert len(triggers) == 12
    lookups: list[str] = []
    original = LLMBatchHook.aget_connection

    async def counted(conn_id):
        lookups.append(conn_id)
        return await original(conn_id)

    monkeypatch.setattr(LLMBatchHook, "aget_connection", staticmethod(counted))
    before = status_gets(llm_conns.stats())
    tasks = [asyncio.ensure_future(anext(t.run())) for t in triggers]
    users: dict[str, int] = {}
    pollers = set()
    async with asyncio.timeout(60):
        while not all(t.done() for t in tasks):  # sample the registry while the triggers run
            for key, pool in pools_of_running_loop().items():
                users[key] = max(users.get(key, 0), pool.users)
                if pool.poller.done():
                    pollers.add(pool.poller.result())
            await asyncio.sleep(0.005)
    events = [t.result() for t in tasks]
    assert len(users) == 2  # one pool per provider endpoint and key, whatever the connection id
    assert sorted(users.values()) == [6, 6] and len(pollers) == 2
    assert API_KEY not in json.dumps(list(users))
    assert sorted(lookups) == ["llm_anthropic_default", "llm_openai_default", "openai_other"]  # once each

    for trigger, event in zip(triggers, events, strict=True):
        assert event.payload["status"] == "success"
        assert list(event.payload["states"]) == trigger.batch_ids
        assert event.payload["states"][trigger.batch_ids[0]]["ending"] == "completed"
    assert pools_of_running_loop() == {}  # the last trigger to leave closed each pool
    polls = sum(p.polls for p in pollers)
    assert polls >= 12
    assert status_gets(llm_conns.stats()) - before == polls  # every status call went through a poller


async def test_a_cancelled_trigger_leaves_and_the_last_one_closes_the_pool(llm_conns, run_root):
    handle = await asyncio.to_thread(submit_op(max_requests_per_batch=10).execute, context())
    ids = [b["batch_id"] for b in handle["batches"]]
    triggers = [
        BatchWaitTrigger(conn_id=handle["conn_id"], provider="openai", batch_ids=b, poll_interval_min=30)
        for b in ids
    ]
    tasks = [asyncio.ensure_future(anext(t.run())) for t in triggers]
    await all_registered(3)
    (pool,) = pools_of_running_loop().values()
    poller = pool.poller.result()
    assert pool.users == 3 and poller.watched == 3
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert pool.users == 2 and poller.watched == 2
    for task in tasks[1:]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert pools_of_running_loop() == {}
    assert poller.backend._http._client.is_closed
