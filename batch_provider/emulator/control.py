"""Control API under ``/_emu`` (no auth, never faulted).

``GET /_emu/health``, ``GET /_emu/clock``, ``POST /_emu/advance?seconds=N``,
``GET|POST|DELETE /_emu/faults``, ``GET /_emu/stats``, ``POST /_emu/reset``, ``GET /_emu/config``,
``POST /_emu/synthetic`` (a large finished batch whose results are generated on the fly while
streamed: ``{"provider": "anthropic"|"openai", "requests": N, "text_bytes": L}``; about
``N * (L + 330)`` bytes; OpenAI answers with ``output_file_id`` and its exact ``bytes``).
The Bedrock and Gemini faces add their settings routes (``/_emu/bedrock``, ``/_emu/gemini``) with
:func:`settings_route`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sized
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .clock import rfc3339
from .faults import FaultSyntaxError
from .store import Store


class Tunable(Protocol):
    """A provider face with run-time knobs: ``settings`` is a dataclass that checks and applies
    changes in ``update`` (``ValueError`` or ``TypeError`` for a bad one)."""

    @property
    def settings(self) -> Any: ...

    @property
    def records(self) -> Sized: ...


def _store(request: Request) -> Store:
    return request.app.state.store


def _bad(message: str) -> Response:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=400)


async def _json(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def clock(request: Request) -> Response:
    store = _store(request)
    now = store.clock.now()
    return JSONResponse({"now": now, "iso": rfc3339(now), "time_factor": store.clock.time_factor})


async def advance(request: Request) -> Response:
    store = _store(request)
    raw = request.query_params.get("seconds")
    try:
        seconds = float(raw) if raw is not None else float((await _json(request)).get("seconds", 0))
        now = store.clock.advance(seconds)
    except (ValueError, TypeError, AttributeError) as exc:
        return _bad(f"bad 'seconds': {exc}")
    store.save_clock()
    return JSONResponse({"now": now, "iso": rfc3339(now), "advanced": seconds})


def _cli_recovery(store: Any) -> dict[str, Any]:
    """``item_recovery`` keeps its CLI value when a new setting leaves it out."""
    return {"item_recovery": store.config.item_recovery}


async def faults(request: Request) -> Response:
    store = _store(request)
    if request.method == "POST":
        try:
            spec = await _json(request)
            if not isinstance(spec, dict):
                raise FaultSyntaxError("expected a JSON object")
            store.faults.set(spec, defaults=_cli_recovery(store))
        except (ValueError, KeyError, TypeError) as exc:
            return _bad(f"bad fault settings: {exc}")
    elif request.method == "DELETE":
        store.faults.set({}, defaults=_cli_recovery(store))
    return JSONResponse(store.faults.to_json())


async def stats(request: Request) -> Response:
    store = _store(request)
    await store.openai.settle()  # plans still being built count in the stats once built
    return JSONResponse(store.stats.to_json())


async def reset(request: Request) -> Response:
    store = _store(request)
    await store.openai.settle(outputs=True)  # no worker thread may write into the cleared state
    store.reset()
    return JSONResponse({"reset": True})


async def config(request: Request) -> Response:
    return JSONResponse(_store(request).config.public())


async def known_models(request: Request) -> Response:
    """``GET``: the model ids served (see models.py); ``POST {"known_models": [...]}``: set them."""
    store = _store(request)
    if request.method == "POST":
        body = await _json(request)
        entries = body.get("known_models") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
            return _bad("expected {\"known_models\": [\"catalog\" | \"*\" | <model id>, ...]}")
        store.config.known_models = list(entries)
    return JSONResponse({"known_models": store.config.known_models})


async def synthetic(request: Request) -> Response:
    store = _store(request)
    try:
        spec = await _json(request)
        n = int(spec.get("requests", 1000))
        text_bytes = int(spec.get("text_bytes", 1000))
        processing = float(spec.get("processing_seconds", 0.0))
    except (ValueError, TypeError, AttributeError) as exc:
        return _bad(f"bad synthetic spec: {exc}")
    if n < 1 or text_bytes < 0:
        return _bad("requests must be >= 1 and text_bytes >= 0")
    base = str(request.base_url).rstrip("/")
    if spec.get("provider", "anthropic") == "openai":
        orec = store.openai.create_synthetic(n, text_bytes)
        view = store.openai.view(orec, await store.openai.plan(orec), store.clock.now())
        return JSONResponse(
            {
                "provider": "openai",
                "id": orec.id,
                "requests": n,
                "output_file_id": view["output_file_id"],
                "bytes": store.files.records[view["output_file_id"]].bytes,
            }
        )
    rec = store.anthropic.create_synthetic(n, text_bytes, processing)
    return JSONResponse(
        {
            "provider": "anthropic",
            "id": rec.id,
            "requests": n,
            "results_url": f"{base}/v1/messages/batches/{rec.id}/results",
            "approx_bytes": n * (text_bytes + 330),
        }
    )


def settings_route(path: str, owner: Callable[[Store], Tunable], count_key: str) -> Route:
    """``GET path``: the face's settings and, under ``count_key``, how many records it holds;
    ``POST path`` with a JSON object: change those settings first (400 and nothing changed when the
    body is not an object; a bad value answers 400 too)."""

    async def endpoint(request: Request) -> Response:
        face = owner(_store(request))
        if request.method == "POST":
            try:
                values = json.loads(await request.body() or b"{}")
                if not isinstance(values, dict):
                    raise ValueError("expected a JSON object")
                face.settings.update(values)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return JSONResponse({**dataclasses.asdict(face.settings), count_key: len(face.records)})

    return Route(path, endpoint, methods=["GET", "POST"], name=f"settings {path}")


ROUTES = [
    Route("/_emu/health", health, methods=["GET"]),
    Route("/_emu/clock", clock, methods=["GET"]),
    Route("/_emu/advance", advance, methods=["POST"]),
    Route("/_emu/faults", faults, methods=["GET", "POST", "DELETE"]),
    Route("/_emu/stats", stats, methods=["GET"]),
    Route("/_emu/reset", reset, methods=["POST"]),
    Route("/_emu/config", config, methods=["GET"]),
    Route("/_emu/models", known_models, methods=["GET", "POST"]),
    Route("/_emu/synthetic", synthetic, methods=["POST"]),
]
