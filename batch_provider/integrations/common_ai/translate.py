"""Translation between common-ai's batch types and ours, for :mod:`.adapter`.

Pure functions, no provider calls: common-ai's requests to :class:`LLMRequest`, our batch states
to common-ai's ``BatchState`` statuses and our :class:`ResultRecord` to its ``RawResultItem``.

Invariants:
- custom_ids are common-ai's ``<key16>-<index>``; a record whose custom_id does not end in an
  index gets index -1, which common-ai drops and counts.
- Request params the adapter sets itself (model, messages, system, max tokens) are never taken
  from a user's params, as in common-ai.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from airflow.providers.common.ai.batch.base import BatchRequest, RawResultItem

from batch_provider.core.models import BatchEnding, ItemStatus, LLMRequest, Message, ResultRecord

ENDING_STATUS = {
    BatchEnding.COMPLETED: "completed",
    BatchEnding.FAILED: "failed",
    BatchEnding.EXPIRED: "expired",
    BatchEnding.CANCELLED: "cancelled",
}
"""common-ai's batch status for each of our batch endings (no ending: ``in_progress``)."""
_ITEM_STATUS = {
    ItemStatus.SUCCEEDED: "success",
    # our backends flag answers that are not the asked-for JSON; common-ai validates them itself
    ItemStatus.INVALID_OUTPUT: "success",
    ItemStatus.EXPIRED: "expired",
    ItemStatus.CANCELLED: "cancelled",
}
_MANAGED_PARAMS = frozenset({"model", "messages", "system", "max_tokens", "max_completion_tokens"})
"""Request params the adapter sets itself; a user's value for them is not sent (as in common-ai)."""


def llm_requests(
    requests: list[BatchRequest],
    *,
    resolve_model: Callable[..., str],
    model: str,
    idempotency_key: str,
    schema: dict[str, Any] | None,
    system_prompt: str,
    max_tokens: int,
    request_params: Mapping[str, Any] | None,
) -> Iterator[LLMRequest]:
    """One :class:`LLMRequest` per common-ai request, in order; ``resolve_model`` is the
    adapter's ``resolve_request_model``."""
    for index, request in enumerate(requests):
        params = {**(request_params or {}), **(request.get("params") or {})}
        temperature = params.pop("temperature", None)
        stop = params.pop("stop", None)
        yield LLMRequest(
            custom_id=f"{idempotency_key}-{index}",
            model=resolve_model(request.get("model"), default_bare_model=model, request_index=index),
            system=request.get("system_prompt") or system_prompt or None,
            messages=[Message(role="user", content=request["prompt"])],
            max_tokens=request.get("max_tokens") or max_tokens,
            temperature=temperature,
            stop=[stop] if isinstance(stop, str) else stop,
            response_schema=schema,
            extra={k: v for k, v in params.items() if k not in _MANAGED_PARAMS},
        )


def raw_item(record: ResultRecord) -> RawResultItem:
    """common-ai's view of one of our result records (the record itself rides along as ``raw``)."""
    prefix, _, index = record.custom_id.rpartition("-")
    usage = record.usage
    return RawResultItem(
        custom_id=record.custom_id,
        index=int(index) if prefix and index.isdigit() else -1,  # -1: common-ai drops and counts it
        provider_status=_ITEM_STATUS.get(record.status, "errored"),  # type: ignore[arg-type]
        model=record.model,
        usage={
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        finish_reason=record.finish_reason,
        error=record.error.model_dump(mode="json", exclude_none=True) if record.error else None,
        raw=record,
    )
