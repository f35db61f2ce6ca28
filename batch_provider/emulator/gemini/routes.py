"""Gemini Developer API HTTP face: batch mode and Files, as ``google-genai`` calls them.

Routes::

    POST   /v1beta/models/{model}:batchGenerateContent   create (inline requests or fileName)
    GET    /v1beta/batches                               list (pageSize, pageToken; newest first)
    GET    /v1beta/batches/{id}                          get (a long-running operation)
    POST   /v1beta/batches/{id}:cancel                   cancel
    DELETE /v1beta/batches/{id}                          delete
    POST   /upload/v1beta/files                          resumable upload: start, then chunks (?upload_id=)
    GET    /v1beta/files, GET|DELETE /v1beta/files/{id}  file records
    GET    /v1beta/files/{id}:download?alt=media         a batch's responses file (also under /download/...)
    GET|POST /_emu/gemini                                settings (expire_seconds, inline_max_bytes, ...)

Errors use Google's envelope ``{"error": {"code", "message", "status"}}``. Auth: any non-empty
``x-goog-api-key`` header or ``key`` query parameter; neither → 403 PERMISSION_DENIED. Server-wide
faults (``POST /_emu/faults``) apply: ``429`` → RESOURCE_EXHAUSTED with ``retry-after`` and a
RetryInfo detail, ``quota`` → RESOURCE_EXHAUSTED without either, 500 → INTERNAL, 502/503/529 →
UNAVAILABLE (503), 504 → DEADLINE_EXCEEDED, ``drop`` (the call takes effect, the answer is cut) and
``reset``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..control import settings_route
from ..store import Store
from ..web import CutResponse, DropConnection, inject_fault
from .files import GeminiError, invalid
from .state import GeminiBatches, attach

Handler = Callable[[Request, GeminiBatches], Awaitable[Response]]
V = "/v1beta"
T = TypeVar("T")


def _error(err: GeminiError) -> Response:
    body: dict[str, Any] = {"code": err.code, "message": err.message, "status": err.status}
    if err.details:
        body["details"] = err.details
    return JSONResponse({"error": body}, status_code=err.code, headers=err.headers)


def _fault_error(kind: str, retry_after: float) -> GeminiError:
    if kind in ("429", "429_long"):
        wait = 300.0 if kind == "429_long" else retry_after
        err = GeminiError(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota) (emulated fault).",
            headers={"retry-after": str(max(0, math.ceil(wait)))},
        )
        err.details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait:g}s"}]
        return err
    if kind == "quota":
        err = GeminiError(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details (emulated fault).",
            headers={"x-should-retry": "false"},
        )
        err.details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}]
        return err
    if kind in ("502", "503", "529"):
        return GeminiError(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later (emulated fault).",
            headers={"retry-after": str(max(0, math.ceil(retry_after)))},
        )
    if kind == "504":
        return GeminiError(504, "DEADLINE_EXCEEDED", "Deadline exceeded (emulated fault).")
    return GeminiError(500, "INTERNAL", "An internal error has occurred (emulated fault).")


def _fault_response(kind: str, retry_after: float) -> Response:
    return _error(_fault_error(kind, retry_after))


def _authorized(request: Request) -> bool:
    """A key in the header or the query; an upload session's own URL (``upload_id``) needs none, as
    the SDK sends the chunks without the key."""
    if request.headers.get("x-goog-api-key", "").strip() or request.query_params.get("key", "").strip():
        return True
    return request.url.path.startswith("/upload/") and bool(request.query_params.get("upload_id"))


def google_endpoint(
    method: str,
    label: str,
    owner: Callable[[Store], T],
    authorized: Callable[[Request], bool],
    denied: GeminiError,
    fn: Callable[[Request, T], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of a Google face's route (Gemini, Vertex): counts the call under ``label``,
    answers ``denied`` when ``authorized`` refuses the caller, injects faults, and renders
    :class:`GeminiError` in Google's envelope. ``fn`` gets the face's state, ``owner(store)``."""

    async def endpoint(request: Request) -> Response:
        store: Store = request.app.state.store
        state = owner(store)
        store.stats.requests[label] += 1
        if not authorized(request):
            return _error(denied)
        kind, early = inject_fault(store, method, request, _fault_response)
        if early is not None:
            return early
        try:
            response = await fn(request, state)
        except GeminiError as err:
            response = _error(err)
        if kind == "drop":
            return CutResponse(response)
        return response

    return endpoint


_UNREGISTERED = GeminiError(
    403,
    "PERMISSION_DENIED",
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API.",
)


def gemini_route(method: str, path: str) -> Callable[[Handler], Route]:
    """A Gemini route: counts the call, checks the key, injects faults, renders errors."""
    label = f"{method} {path}"

    def deco(fn: Handler) -> Route:
        endpoint = google_endpoint(method, label, attach, _authorized, _UNREGISTERED, fn)
        return Route(path, endpoint, methods=[method], name=f"gemini {label}")

    return deco


async def _json(request: Request, max_bytes: int | None = None) -> Any:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise invalid(f"Request payload size exceeds the limit: {max_bytes} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid("Invalid JSON payload received.") from None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _page(request: Request, default: int) -> tuple[int, int]:
    try:
        size = int(request.query_params.get("pageSize") or default)
        offset = int(request.query_params.get("pageToken") or 0)
    except ValueError:
        raise invalid("pageSize and pageToken must be integers.") from None
    return max(1, min(size, 1000)), max(0, offset)


# ----------------------------------------------------------------------------- batches


@gemini_route("POST", V + "/models/{model}:batchGenerateContent")
async def create_batch(request: Request, batches: GeminiBatches) -> Response:
    body = await _json(request, batches.settings.inline_max_bytes)
    rec = await batches.create(request.path_params["model"], body)
    return JSONResponse(await asyncio.to_thread(batches.operation, rec))


@gemini_route("GET", V + "/batches")
async def list_batches(request: Request, batches: GeminiBatches) -> Response:
    size, offset = _page(request, 50)
    every = batches.listed()
    with_inlined = batches.settings.list_inlined_responses
    chosen = every[offset : offset + size]
    page = await asyncio.to_thread(lambda: [batches.operation(r, with_inlined=with_inlined) for r in chosen])
    body: dict[str, Any] = {"operations": page}
    if offset + size < len(every):
        body["nextPageToken"] = str(offset + size)
    return JSONResponse(body)


@gemini_route("POST", V + "/batches/{batch}:cancel")
async def cancel_batch(request: Request, batches: GeminiBatches) -> Response:
    batches.cancel(batches.get(request.path_params["batch"]))
    return JSONResponse({})


@gemini_route("GET", V + "/batches/{batch}")
async def get_batch(request: Request, batches: GeminiBatches) -> Response:
    # Building a plan or inlined responses reads the whole request file: off the event loop.
    return JSONResponse(await asyncio.to_thread(batches.operation, batches.get(request.path_params["batch"])))


@gemini_route("DELETE", V + "/batches/{batch}")
async def delete_batch(request: Request, batches: GeminiBatches) -> Response:
    batches.delete(batches.get(request.path_params["batch"]))
    return JSONResponse({})


# ----------------------------------------------------------------------------- files


@gemini_route("POST", "/upload" + V + "/files")
async def upload(request: Request, batches: GeminiBatches) -> Response:
    files = batches.files
    session_id = request.query_params.get("upload_id")
    if session_id is None:
        session = files.start(await _json(request), request.headers)
        url = f"{_base_url(request)}/upload{V}/files?upload_id={session.id}&upload_protocol=resumable"
        return Response(b"", headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
    session = files.session(session_id)
    command = {c.strip() for c in (request.headers.get("x-goog-upload-command") or "").lower().split(",")}
    if not command & {"upload", "finalize"}:
        raise invalid("X-Goog-Upload-Command must name upload and/or finalize.")
    try:
        offset = int(request.headers.get("x-goog-upload-offset") or 0)
    except ValueError:
        raise invalid("X-Goog-Upload-Offset must be an integer.") from None
    fh = files.open_chunk(session, offset) if "upload" in command else None
    if fh is not None:
        try:
            written = offset
            async for chunk in request.stream():
                await asyncio.to_thread(fh.write, chunk)
                written += len(chunk)
                if written > batches.settings.max_file_bytes:
                    raise invalid(f"The file is over the limit of {batches.settings.max_file_bytes} bytes.")
            session.received = written
        finally:
            fh.close()
    if "finalize" not in command:
        return Response(
            b"",
            headers={"x-goog-upload-status": "active", "x-goog-upload-size-received": str(session.received)},
        )
    fresh = session.file_id is None
    rec = files.finalize(session, batches.store.clock.now(), batches.settings.max_file_bytes)
    if fresh:
        batches.store.stats.files_uploaded += 1
    return JSONResponse({"file": rec.to_api(_base_url(request))}, headers={"x-goog-upload-status": "final"})


@gemini_route("GET", V + "/files")
async def list_files(request: Request, batches: GeminiBatches) -> Response:
    size, offset = _page(request, 10)
    every = batches.files.listed(batches.store.clock.now())
    body: dict[str, Any] = {"files": [f.to_api(_base_url(request)) for f in every[offset : offset + size]]}
    if offset + size < len(every):
        body["nextPageToken"] = str(offset + size)
    return JSONResponse(body)


async def _download(request: Request, batches: GeminiBatches) -> Response:
    if request.query_params.get("alt") != "media":
        raise invalid("Downloads need alt=media.")
    file_id = request.path_params["file"]
    if not file_id.startswith("batch-"):
        batches.files.get(file_id, batches.store.clock.now())
        raise invalid("Only generated files can be downloaded; uploaded files cannot.")
    rec = batches.output_batch(file_id)
    body: AsyncIterator[bytes] = iterate_in_threadpool(batches.result_chunks(rec, batches.kept(rec)))
    if rec.downloads < batches.plan(rec).faults.drop:
        rec.downloads += 1
        batches.save(rec)
        batches.store.stats.faults["stream_drop"] += 1
        body = _cut_half(body)
    return StreamingResponse(body, media_type="application/jsonl")


async def _cut_half(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Send about half of the first chunk, ending in the middle of a line, then drop."""
    async for chunk in body:
        yield chunk[: max(1, len(chunk) // 2)]
        break
    raise DropConnection()


download = gemini_route("GET", V + "/files/{file}:download")(_download)
download_alt = gemini_route("GET", "/download" + V + "/files/{file}:download")(_download)


@gemini_route("GET", V + "/files/{file}")
async def get_file(request: Request, batches: GeminiBatches) -> Response:
    file_id = request.path_params["file"]
    now = batches.store.clock.now()
    if file_id.startswith("batch-"):
        rec = batches.output_batch(file_id)
        return JSONResponse(
            {
                "name": f"files/{file_id}",
                "mimeType": "application/jsonl",
                "createTime": None,
                "state": "ACTIVE",
                "source": "GENERATED",
                "downloadUri": f"{_base_url(request)}/download{V}/files/{file_id}:download?alt=media",
                "displayName": rec.display_name,
            }
        )
    return JSONResponse(batches.files.get(file_id, now).to_api(_base_url(request)))


@gemini_route("DELETE", V + "/files/{file}")
async def delete_file(request: Request, batches: GeminiBatches) -> Response:
    batches.files.get(request.path_params["file"], batches.store.clock.now())
    batches.files.delete(request.path_params["file"])
    return JSONResponse({})


ROUTES = [
    create_batch,
    list_batches,
    cancel_batch,
    get_batch,
    delete_batch,
    upload,
    list_files,
    download,
    download_alt,
    get_file,
    delete_file,
    settings_route("/_emu/gemini", attach, "batches"),
]
