"""``model_id="bedrock:<model id>"`` on an amazon-provider ``aws`` connection with the ``bedrock_*``
extras (the same connection our own Bedrock tasks use)."""

from __future__ import annotations

from typing import Any, ClassVar

from batch_provider.backends.bedrock.connection import bedrock_options
from batch_provider.core.limits import BEDROCK_LIMITS
from batch_provider.core.models import Provider
from batch_provider.integrations.common_ai.adapter import BackendBatchAdapter


class BedrockBatchAdapter(BackendBatchAdapter):
    """Bedrock batch inference (model invocation jobs, S3 input and output).

    Credentials, region, endpoints and the assumed role come from the ``aws`` connection through
    the amazon provider; the job's role and S3 location from its ``bedrock_role_arn`` and
    ``bedrock_s3_uri`` extras. Batch ids are ``<conn_id>@<job ARN>`` (see :mod:`.connection`).
    """

    name = "bedrock"
    provider: ClassVar[Provider] = Provider.BEDROCK
    conn_types = frozenset({"aws"})
    limits = BEDROCK_LIMITS
    max_requests = BEDROCK_LIMITS.max_requests_per_batch
    max_payload_bytes = BEDROCK_LIMITS.max_bytes_per_batch
    needs_connection = True

    def backend_options(self, conn_id: str | None, conn: Any | None) -> dict[str, Any]:
        return bedrock_options(str(conn_id), conn.extra_dejson if conn is not None else None)
