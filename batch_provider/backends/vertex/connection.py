"""VertexBackend options from an Airflow ``llm_vertex`` connection, for the Airflow layer.

Fields: the password holds the service-account key JSON (empty: Application Default
Credentials); the host is an optional aiplatform API root. Extras (each may also be given as a
keyword to :func:`vertex_options`, which wins):

    project         the Google Cloud project (default: the key's or ADC's)
    region          the jobs' location (default us-central1; ``global`` for the global endpoint)
    staging_uri     required: gs://bucket/prefix where inputs are staged
    output_uri      gs://bucket/prefix for predictions (default: staging_uri)
    gcs_endpoint    a GCS JSON API root (emulators; default Google's)
    anonymous       true: send no credentials (emulators only)

Invariant: the key goes only into the returned options (handed to the backend's constructor);
error messages name fields, never values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXTRAS = ("project", "region", "staging_uri", "output_uri", "gcs_endpoint", "anonymous", "api_version")


def vertex_options(
    conn_id: str,
    *,
    password: str | None,
    extra: Mapping[str, Any] | None,
    base_url: str | None,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``create_backend("vertex", ...)``. Raises ``ValueError`` naming the
    missing field when the staging location is absent."""
    extra = extra or {}
    options: dict[str, Any] = {}
    for name in EXTRAS:
        value = extra.get(name, extra.get(f"extra__llm_vertex__{name}"))
        if value not in (None, ""):
            options[name] = value
    if password:
        options["service_account_json"] = password
    if base_url:
        options["base_url"] = base_url
    options.update({k: v for k, v in overrides.items() if v is not None})
    if not options.get("staging_uri"):
        raise ValueError(
            f"connection {conn_id!r} has no 'staging_uri' extra: the gs://bucket/prefix where Vertex "
            "batch inputs are staged (predictions go to 'output_uri', default the same prefix)"
        )
    return options
