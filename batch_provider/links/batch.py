"""Extra links to each batch of a task, in its provider's console.

The URLs are computed on the worker, when the batches are known, and pushed as the link's XCom
before a deferral, so they show while the task waits. ``get_link`` only reads that XCom back
(the API server has no connection lookups to do).

A connection with a custom base URL (the emulator, an OpenAI-compatible service) links to the
batch object on that URL, since there is no console to link to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from batch_provider.core.models import Provider

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

MAX_LINKED_BATCHES = 3
"""Link slots per task: the UI needs a fixed set of links; later batches are named in the log."""

CONSOLE_URLS: dict[Provider, str] = {
    Provider.OPENAI: "https://platform.openai.com/batches/{batch_id}",
    Provider.ANTHROPIC: "https://console.anthropic.com/workspaces/default/batches/{batch_id}",
    Provider.GEMINI: "https://aistudio.google.com/batches/{batch_id}",
}

PUBLIC_API_ROOTS = (
    "https://api.openai.com",
    "https://api.anthropic.com",
    "https://generativelanguage.googleapis.com",
)

BEDROCK_CONSOLE = "https://console.aws.amazon.com/bedrock/home?region={region}#/batch-inference/jobs/{job_id}"


def bedrock_url(job_arn: str) -> str:
    """The AWS console page of a Bedrock job, from its ARN
    (``arn:aws:bedrock:<region>:<account>:model-invocation-job/<id>``)."""
    parts = job_arn.split(":")
    region = parts[3] if len(parts) > 5 and parts[3] else "us-east-1"
    job_id = job_arn.rsplit("/", 1)[-1]
    return BEDROCK_CONSOLE.format(region=region, job_id=quote(job_id, safe=""))


VERTEX_CONSOLE = (
    "https://console.cloud.google.com/vertex-ai/locations/{region}/batch-predictions/{job_id}?project={project}"
)


def vertex_url(job_name: str, base_url: str | None = None) -> str:
    """The Cloud console page of a Vertex job, from its resource name
    (``projects/<p>/locations/<region>/batchPredictionJobs/<id>``), or the job on an emulator's URL."""
    root = (base_url or "").rstrip("/")
    if root and not root.endswith("aiplatform.googleapis.com"):
        return f"{root}/v1/{job_name}"
    parts = job_name.split("/")
    if len(parts) != 6:
        return VERTEX_CONSOLE.split("/locations/")[0] + "/batch-predictions"
    return VERTEX_CONSOLE.format(
        region=quote(parts[3], safe=""), job_id=quote(parts[5], safe=""), project=quote(parts[1], safe="")
    )


def batch_url(provider: Provider | str, batch_id: str, base_url: str | None = None) -> str:
    """The page for one batch: the provider's console, or the batch on a custom base URL."""
    provider = Provider(provider)
    if provider is Provider.BEDROCK:
        return bedrock_url(batch_id)
    if provider is Provider.VERTEX:
        return vertex_url(batch_id, base_url)
    custom = base_url and not base_url.rstrip("/").startswith(PUBLIC_API_ROOTS)
    if provider is Provider.GEMINI:
        # Gemini ids are resource names ("batches/<id>"): the slash is part of the path, not the id.
        name = batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"
        if not custom:
            return CONSOLE_URLS[provider].format(batch_id=quote(name.removeprefix("batches/"), safe=""))
        return f"{(base_url or '').rstrip('/')}/v1beta/{name}"
    if not custom and provider in CONSOLE_URLS:
        return CONSOLE_URLS[provider].format(batch_id=batch_id)
    root = (base_url or "").rstrip("/")
    if provider is Provider.ANTHROPIC:
        return f"{root}/v1/messages/batches/{batch_id}"
    if not root.endswith("/v1"):
        root = f"{root}/v1"
    return f"{root}/batches/{batch_id}"


@attrs.define()
class BatchLink(BaseOperatorLink):
    """Link slot ``index`` (0-based): the ``index``-th batch of the task's latest submission."""

    index: int = 0

    @property
    def name(self) -> str:
        return f"LLM Batch {self.index + 1}"

    @property
    def xcom_key(self) -> str:
        return f"_link_BatchLink_{self.index}"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        try:
            value = XCom.get_value(key=self.xcom_key, ti_key=ti_key)
        except Exception:
            return ""
        return value or ""


def batch_links(count: int = MAX_LINKED_BATCHES) -> tuple[BatchLink, ...]:
    return tuple(BatchLink(index=i) for i in range(count))


def persist_batch_links(
    context: Any, provider: Provider | str, batch_ids: Sequence[str], base_url: str | None
) -> list[str]:
    """Push the link XComs for ``batch_ids`` now (not only when the task ends) and return all URLs."""
    urls = [batch_url(provider, b, base_url) for b in batch_ids]
    ti = context["ti"]
    for i in range(MAX_LINKED_BATCHES):
        ti.xcom_push(key=BatchLink(index=i).xcom_key, value=urls[i] if i < len(urls) else "")
    return urls
