"""OpenAI HTTP face: Files and Batches. State lives in :mod:`.state`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import ApiError, not_found
from ..multipart_upload import is_multipart, receive_upload
from ..store import FileRecord, Store, new_id
from ..web import api_route, cut_stream, int_param, json_body
from .outputs import synthetic_chunks

FILE_PURPOSES = (
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
)
CHUNK = 1 << 20


@api_route("openai", "POST", "/v1/files")
async def upload_file(request: Request, store: Store) -> Response:
    if not is_multipart(request):
        raise await _error_without_file(request, store)
    fid = new_id("file-", 22)
    path = store.files.path(fid)
    limit = store.config.openai_max_upload_bytes
    try:
        try:
            up = await receive_upload(request, path, limit)
        except Exception as exc:
            raise ApiError(400, f"Could not parse the multipart body: {exc}") from exc
        purpose, ttl = _upload_params(up.fields.get, up.file_field == "file", store)
        if up.too_large:
            raise ApiError(400, f"File is too large: the limit is {limit} bytes.", param="file")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    now = store.clock.now()
    rec = store.files.add(
        FileRecord(
            id=fid,
            bytes=up.size,
            created_at=int(now),
            filename=up.filename or "upload.jsonl",
            purpose=purpose,
            expires_at=int(now + ttl) if ttl is not None else None,
        )
    )
    store.stats.files_uploaded += 1
    return JSONResponse(rec.to_api())


async def _error_without_file(request: Request, store: Store) -> ApiError:
    """The 400 for a body that is not multipart, so holds no file (its form fields checked first)."""
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:
        return ApiError(400, f"Could not parse the multipart body: {exc}")
    await form.close()
    try:
        _upload_params(form.get, False, store)
    except ApiError as err:
        return err
    return ApiError(400, "Missing required parameter: 'file'.", param="file")


def _upload_params(get: Callable[[str], Any], has_file: bool, store: Store) -> tuple[str, float | None]:
    """(purpose, ttl) of an upload from its form fields; ApiError 400 for a bad form."""
    purpose = get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in FILE_PURPOSES:
        raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
    if not has_file:
        raise ApiError(400, "Missing required parameter: 'file'.", param="file")
    ttl: float | None = store.config.file_ttl_seconds if purpose == "batch" else None
    anchor, seconds = get("expires_after[anchor]"), get("expires_after[seconds]")
    if anchor is not None or seconds is not None:
        try:
            secs = int(str(seconds))
        except ValueError:
            secs = -1
        if anchor != "created_at" or not 3600 <= secs <= 2592000:
            raise ApiError(
                400,
                "Invalid 'expires_after': anchor must be 'created_at' and seconds within 3600..2592000.",
                param="expires_after",
            )
        ttl = float(secs)
    return purpose, ttl


async def _file(store: Store, file_id: str) -> FileRecord:
    rec = store.files.get(file_id, store.clock.now())
    if rec is None:
        raise not_found(f"No such File object: {file_id}", "openai")
    return await store.files.ready(rec)


@api_route("openai", "GET", "/v1/files/{file_id}")
async def retrieve_file(request: Request, store: Store) -> Response:
    return JSONResponse((await _file(store, request.path_params["file_id"])).to_api())


@api_route("openai", "DELETE", "/v1/files/{file_id}")
async def delete_file(request: Request, store: Store) -> Response:
    file_id = request.path_params["file_id"]
    if store.files.get(file_id, store.clock.now()) is None or not store.files.delete(file_id):
        raise not_found(f"No such File object: {file_id}", "openai")
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


@api_route("openai", "GET", "/v1/files/{file_id}/content")
async def file_content(request: Request, store: Store) -> Response:
    rec = await _file(store, request.path_params["file_id"])
    path = store.files.path(rec.id)

    async def chunks() -> AsyncIterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    body: AsyncIterator[bytes] = chunks()
    if rec.synthetic_lines:
        body = iterate_in_threadpool(synthetic_chunks(rec.synthetic_lines, rec.synthetic_text_bytes))
    owner = store.openai.output_owner(rec.id)
    if owner is not None:
        faults = store.openai.plans[owner.id].faults
        if owner.downloads < faults.drop:
            owner.downloads += 1
            store.openai.save(owner)
            store.stats.faults["stream_drop"] += 1
            body = cut_stream(body, rec.bytes)
    return StreamingResponse(
        body, media_type="application/octet-stream", headers={"content-length": str(rec.bytes)}
    )


@api_route("openai", "GET", "/v1/files")
async def list_files(request: Request, store: Store) -> Response:
    q = request.query_params
    purpose = q.get("purpose")
    limit = int_param(request, "limit", 10000, 1, 10000)
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "Invalid 'order': expected 'asc' or 'desc'.", param="order")
    after = q.get("after")
    now = store.clock.now()
    recs = [r for r in store.files.records.values() if r.expires_at is None or now < r.expires_at]
    if purpose:
        recs = [r for r in recs if r.purpose == purpose]
    if order == "desc":
        recs.reverse()
    if after:
        ids = [r.id for r in recs]
        recs = recs[ids.index(after) + 1 :] if after in ids else []
    page = recs[:limit]
    data = [(await store.files.ready(r)).to_api() for r in page]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(recs) > limit,
        }
    )


@api_route("openai", "POST", "/v1/batches")
async def create_batch(request: Request, store: Store) -> Response:
    rec = await store.openai.create(await json_body(request))
    return JSONResponse(await store.openai.created_view(rec))


@api_route("openai", "GET", "/v1/batches/{batch_id}")
async def retrieve_batch(request: Request, store: Store) -> Response:
    rec = store.openai.get(request.path_params["batch_id"])
    plan = await store.openai.plan(rec)
    return JSONResponse(store.openai.view(rec, plan, store.clock.now()))


@api_route("openai", "POST", "/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, store: Store) -> Response:
    rec = store.openai.get(request.path_params["batch_id"])
    return JSONResponse(await store.openai.cancel(rec))


@api_route("openai", "GET", "/v1/batches")
async def list_batches(request: Request, store: Store) -> Response:
    limit = int_param(request, "limit", 20, 1, 100)
    items, more = store.openai.older_than(request.query_params.get("after"), limit)
    now = store.clock.now()
    data: list[dict[str, Any]] = [store.openai.view(r, await store.openai.plan(r), now) for r in items]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


# Hot routes first: Starlette tries routes in order.
ROUTES = [
    retrieve_batch,
    file_content,
    retrieve_file,
    upload_file,
    list_files,
    delete_file,
    create_batch,
    list_batches,
    cancel_batch,
]
