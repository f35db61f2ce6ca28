"""BedrockBackend options from an Airflow ``aws`` connection, for the Airflow layer.

The connection stays a plain amazon-provider ``aws`` connection: credentials, region, assumed role
(``role_arn`` extra) and endpoints (``endpoint_url``, ``service_config``) are read by the amazon
provider's ``AwsBaseHook`` through ``aws_conn_id``. The Bedrock-specific settings live in extras
prefixed ``bedrock_`` so they never collide with the amazon provider's own keys. In particular the
connection's ``role_arn`` extra is the role *Airflow* assumes; the role *Bedrock* assumes to read
and write S3 is ``bedrock_role_arn``.

Extras read (each may also be given as a keyword to :func:`bedrock_options`, which wins):

    bedrock_role_arn              required: the job's service role
    bedrock_s3_uri                base prefix: <uri>/input and <uri>/output, or
    bedrock_s3_input_uri          input prefix
    bedrock_s3_output_uri         output prefix
    bedrock_timeout_hours         24..168 (default 24)
    bedrock_invocation_type       InvokeModel (default) or Converse
    bedrock_min_records_per_job   default 100
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_EXTRAS = {
    "bedrock_role_arn": "role_arn",
    "bedrock_s3_uri": "s3_uri",
    "bedrock_s3_input_uri": "s3_input_uri",
    "bedrock_s3_output_uri": "s3_output_uri",
    "bedrock_timeout_hours": "timeout_hours",
    "bedrock_invocation_type": "invocation_type",
    "bedrock_min_records_per_job": "min_records_per_job",
}
_INTEGERS = frozenset({"timeout_hours", "min_records_per_job"})


def bedrock_options(conn_id: str, extra: Mapping[str, Any] | None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``create_backend("bedrock", ...)`` from an ``aws`` connection's id and
    extras. Raises ``ValueError`` naming the missing extra when the role or S3 location is absent."""
    extra = extra or {}
    options: dict[str, Any] = {"aws_conn_id": conn_id}
    for key, option in _EXTRAS.items():
        value = extra.get(key)
        if value not in (None, ""):
            options[option] = int(value) if option in _INTEGERS else value
    options.update({k: v for k, v in overrides.items() if v is not None})
    if not options.get("role_arn"):
        raise ValueError(
            f"connection {conn_id!r} has no 'bedrock_role_arn' extra: the IAM role Bedrock assumes to "
            "read the input and write the output in S3"
        )
    if not options.get("s3_uri") and not (options.get("s3_input_uri") and options.get("s3_output_uri")):
        raise ValueError(
            f"connection {conn_id!r} needs 'bedrock_s3_uri' (or 'bedrock_s3_input_uri' and "
            "'bedrock_s3_output_uri'): where batch input and output live in S3"
        )
    return options
