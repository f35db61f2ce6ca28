"""ASGI application factory: one Starlette app, one router per provider plus ``/_emu`` control.

Provider routers are plain route lists (``openai_routes.ROUTES``, ``anthropic_routes.ROUTES``);
a Bedrock or Gemini face is added the same way, sharing the :class:`~.store.Store`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import (
    anthropic_routes,
    bedrock_routes,
    bedrock_state,
    control,
    gemini_routes,
    gemini_state,
    openai_routes,
)
from .config import EmulatorConfig
from .errors import ApiError
from .store import Store
from .vertex import routes as vertex_routes
from .vertex import state as vertex_state
from .web import error_response, install_log_filter, provider_of


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    path = request.scope["path"]
    if not path.startswith("/v1"):
        return JSONResponse({"error": {"message": str(getattr(exc, "detail", exc))}}, status_code=status)
    message = (
        "Unknown request URL: " + request.method + " " + path if status == 404 else "Method not allowed."
    )
    return error_response(provider_of(path), ApiError(status, message))


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    config = config or EmulatorConfig()
    store = Store(config)
    bedrock_state.attach(store)
    gemini_state.attach(store)
    vertex_state.attach(store)
    install_log_filter()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.close()

    app = Starlette(
        routes=[
            *openai_routes.ROUTES,
            *anthropic_routes.ROUTES,
            *bedrock_routes.ROUTES,
            *gemini_routes.ROUTES,
            *vertex_routes.ROUTES,
            *control.ROUTES,
        ],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.store = store
    return app
