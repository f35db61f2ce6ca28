"""The provider's Airflow plugin: the "LLM batches" page in the UI navigation.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), so installing the
provider is enough. The API server mounts the FastAPI app at ``/llm-batches``; the external view
puts it in the navigation, shown inside Airflow's UI at ``/plugin/llm-batches``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from batch_provider.ui.app import URL_PREFIX, app


class BatchProviderPlugin(AirflowPlugin):
    name = "llm_batch"
    fastapi_apps = [
        {"app": app, "url_prefix": URL_PREFIX, "name": "LLM batches"},
    ]
    external_views = [
        {
            "name": "LLM batches",
            "href": f"{URL_PREFIX}/",
            "url_route": "llm-batches",
            "destination": "nav",
            "nav_top_level": True,
        },
    ]
