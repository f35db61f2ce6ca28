"""ASGI application factory: one Starlette app, one router per provider plus ``/_emu`` control.

Each provider package (``openai/``, ``anthropic/``, ``bedrock/``, ``gemini/``) joins
:mod:`.providers` with its state and its routes (plain route lists); the app attaches every joined
provider's state to one shared :class:`~.store.Store` and serves their routes plus ``/_emu``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import anthropic, bedrock, control, gemini, openai, providers  # noqa: F401 (importing a provider joins it)
from .config import EmulatorConfig
from .errors import ApiError
from .store import Store
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
    for provider in providers.joined():
        provider.attach(store)
    install_log_filter()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.close()

    app = Starlette(
        routes=[*(route for provider in providers.joined() for route in provider.routes), *control.ROUTES],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.store = store
    return app
