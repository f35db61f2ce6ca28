"""``model_id="google-cloud:<model>"`` (pydantic-ai's prefix for Gemini on Vertex AI; the older
``"google-vertex:"`` and this provider's own ``"vertex:"`` work too) on an ``llm_vertex`` or
common-ai ``pydanticai_vertex`` connection: Vertex AI batch prediction with GCS input and output.

Like Bedrock, Vertex needs the whole connection (project, region, the GCS staging location, the
service-account key), so batch ids are ``<conn_id>@<job resource name>`` (see :mod:`.connection`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from batch_provider.backends.vertex.connection import vertex_options
from batch_provider.core.limits import VERTEX_LIMITS
from batch_provider.core.models import Provider
from batch_provider.integrations.common_ai.adapter import BackendBatchAdapter


def pydanticai_vertex_overrides(extra: dict[str, Any]) -> dict[str, Any]:
    """A ``pydanticai_vertex`` connection's own extras in our backend's terms: ``location`` is
    the region, ``service_account_info`` (an object) the key, ``base_url`` the API root."""
    overrides: dict[str, Any] = {}
    if extra.get("location") and not extra.get("region"):
        overrides["region"] = extra["location"]
    info = extra.get("service_account_info")
    if info:
        overrides["service_account_json"] = info  # a JSON text or an object: the backend reads both
    if extra.get("base_url"):
        overrides["base_url"] = extra["base_url"]
    return overrides


class VertexBatchAdapter(BackendBatchAdapter):
    """Vertex AI batch prediction for Gemini models (``batchPredictionJobs``).

    From an ``llm_vertex`` connection: the key JSON in the password (empty: Application Default
    Credentials), an optional API root in the host, and the ``project``, ``region``,
    ``staging_uri``, ``output_uri``, ``gcs_endpoint`` extras. From a ``pydanticai_vertex`` one:
    ``project``, ``location``, ``service_account_info`` and ``staging_uri`` (plus the optional
    extras above). Without ``staging_uri`` the task fails in ``validate_requests``, before any
    job is created.
    """

    name = "google-cloud"
    provider: ClassVar[Provider] = Provider.VERTEX
    conn_types = frozenset({"llm_vertex", "pydanticai_vertex"})
    limits = VERTEX_LIMITS
    max_requests = VERTEX_LIMITS.max_requests_per_batch
    max_payload_bytes = VERTEX_LIMITS.max_bytes_per_batch
    needs_connection = True

    def backend_options(self, conn_id: str | None, conn: Any | None) -> dict[str, Any]:
        extra = dict(conn.extra_dejson) if conn is not None else {}
        overrides = {}
        if getattr(conn, "conn_type", None) == "pydanticai_vertex":
            overrides = pydanticai_vertex_overrides(extra)
        host = conn.host if conn is not None else None
        return vertex_options(
            str(conn_id),
            password=conn.password if conn is not None else None,
            extra=extra,
            base_url=host or overrides.pop("base_url", None),
            **overrides,
        )


class GoogleVertexBatchAdapter(VertexBatchAdapter):
    """The same adapter under pydantic-ai's former Vertex prefix, ``model_id="google-vertex:<model>"``."""

    name = "google-vertex"


class VertexAliasBatchAdapter(VertexBatchAdapter):
    """The same adapter under this provider's own name, ``model_id="vertex:<model>"``."""

    name = "vertex"
