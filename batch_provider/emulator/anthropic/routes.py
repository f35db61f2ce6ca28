"""Anthropic HTTP face: Message Batches. State lives in :mod:`.state`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import ApiError, not_found
from ..store import Store
from ..web import DropConnection, api_route, int_param, json_body

PREFIX = "/v1/messages/batches"


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@api_route("anthropic", "POST", PREFIX)
async def create_batch(request: Request, store: Store) -> Response:
    body = await json_body(request, store.config.anthropic_max_body_bytes)
    rec = await store.anthropic.create(body)
    plan = await store.anthropic.plan(rec)
    return JSONResponse(store.anthropic.view(rec, plan, store.clock.now(), base_url(request)))


@api_route("anthropic", "GET", PREFIX + "/{batch_id}")
async def retrieve_batch(request: Request, store: Store) -> Response:
    rec = store.anthropic.get(request.path_params["batch_id"])
    plan = await store.anthropic.plan(rec)
    return JSONResponse(store.anthropic.view(rec, plan, store.clock.now(), base_url(request)))


@api_route("anthropic", "GET", PREFIX)
async def list_batches(request: Request, store: Store) -> Response:
    q = request.query_params
    limit = int_param(request, "limit", 20, 1, 1000)
    if q.get("before_id") and q.get("after_id"):
        raise ApiError(400, "Only one of before_id and after_id may be given.")
    items, more = store.anthropic.page(q.get("before_id"), q.get("after_id"), limit)
    now, base = store.clock.now(), base_url(request)
    data = [store.anthropic.view(r, await store.anthropic.plan(r), now, base) for r in items]
    return JSONResponse(
        {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@api_route("anthropic", "POST", PREFIX + "/{batch_id}/cancel")
async def cancel_batch(request: Request, store: Store) -> Response:
    rec = store.anthropic.get(request.path_params["batch_id"])
    return JSONResponse(await store.anthropic.cancel(rec, base_url(request)))


@api_route("anthropic", "DELETE", PREFIX + "/{batch_id}")
async def delete_batch(request: Request, store: Store) -> Response:
    rec = store.anthropic.get(request.path_params["batch_id"])
    await store.anthropic.delete(rec)
    return JSONResponse({"id": rec.id, "type": "message_batch_deleted"})


@api_route("anthropic", "GET", PREFIX + "/{batch_id}/results")
async def batch_results(request: Request, store: Store) -> Response:
    rec = store.anthropic.get(request.path_params["batch_id"])
    plan = await store.anthropic.plan(rec)
    now = store.clock.now()
    if store.anthropic.archived(rec, now):
        raise not_found(f"Results of {rec.id} are no longer available (archived).", "anthropic")
    status, *_ = store.anthropic.state(rec, plan, now)
    if status != "ended":
        raise ApiError(400, f"Batch {rec.id} has not ended yet (processing_status: {status}).")
    lines: Iterator[bytes] = store.anthropic.result_lines(rec, plan, now)
    body: AsyncIterator[bytes] = iterate_in_threadpool(lines)
    if rec.downloads < plan.faults.drop:
        rec.downloads += 1
        store.anthropic.save(rec)
        store.stats.faults["stream_drop"] += 1
        body = _cut_half(body, plan.n)
    return StreamingResponse(body, media_type="application/x-jsonl")


async def _cut_half(body: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    """Send about half of the result lines, ending in the middle of a line, then drop."""
    want = max(1, n // 2)
    sent = 0
    async for chunk in body:
        lines = chunk.count(b"\n")
        if sent + lines >= want:
            keep = chunk.split(b"\n")[: want - sent]
            partial = b"\n".join(keep) + b"\n" + chunk.split(b"\n")[want - sent][:10]
            yield partial
            raise DropConnection()
        sent += lines
        yield chunk
    raise DropConnection()


ROUTES = [retrieve_batch, batch_results, create_batch, list_batches, cancel_batch, delete_batch]
