"""The provider's Airflow plugin: the "LLM batches" page in the UI navigation.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), so installing the
provider is enough. The API server mounts the page's FastAPI app at ``/llm-batches``; the
external view puts it in the navigation, shown inside Airflow's UI at ``/plugin/llm-batches``.

Every Airflow component loads plugins, but only the API server serves the page: the app (and the
API server modules it needs) is imported on its first request, never when the plugin loads.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/llm-batches"


class LazyPageApp:
    """An ASGI app that imports ``batch_provider.ui.app`` on the first request it gets."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from batch_provider.ui.app import app

            self._app = app
        await self._app(scope, receive, send)


class BatchProviderPlugin(AirflowPlugin):
    name = "llm_batch"
    fastapi_apps = [{"app": LazyPageApp(), "url_prefix": URL_PREFIX, "name": "LLM batches"}]
    external_views = [
        {
            "name": "LLM batches",
            "href": f"{URL_PREFIX}/",
            "url_route": "llm-batches",
            "destination": "nav",
            "nav_top_level": True,
        },
    ]
