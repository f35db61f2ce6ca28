"""Operators for one LLM batch run: submit, collect, retry.

Invariants:
- XCom carries only the small run handle and summaries (paths, ids, counts): never request or
  result data, never a key.
- The run key is (dag_id, task_id, run_id, map_index), never try_number: a retried submit task
  re-attaches to the batches its earlier try created instead of paying for them again.
- Every run writes under its own run directory ``<run_path>/<dag_id>/<run_id>/<group>[/map-N]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from batch_provider import metrics
from batch_provider.core.cache import ResultCache
from batch_provider.core.collection import RunSummary, collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.models import LLMRequest, RejectedRow, RequestKind
from batch_provider.core.records import iter_list, iter_records
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory, safe_segment
from batch_provider.core.submission import BudgetExceededError, handle_for, submit_run
from batch_provider.core.watch import DEFAULT_POLL_INTERVAL_MAX, DEFAULT_POLL_INTERVAL_MIN, watch_batches
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.links.batch import batch_links, persist_batch_links
from batch_provider.operators._common import (
    as_storage_path,
    deadline_after,
    default_run_path,
    run_dir_of,
    run_sync,
    seconds_of,
    upstream_handle,
)
from batch_provider.triggers.batch import BatchWaitTrigger, cancel_batches


class TaskBudgetExceededError(BudgetExceededError, AirflowFailException):
    """The submit task's estimate is over ``max_cost_usd``: fails the task without Airflow retries
    (a retry cannot change the estimate) and is still a :class:`BudgetExceededError`."""


CACHE_FOLDER = "_cache"
"""The default result cache, under the run path beside the DAG folders: shared by every run."""

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".md", ".txt", ".rst", ".html")


def iter_input_rows(path: Any, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RejectedRow]]:
    """Rows of a file, or of every file in a folder (sorted by name), numbered from 1.

    Data files (JSONL, CSV, Parquet) give one row per record; text documents (``.md``, ``.txt``,
    ``.rst``, ``.html``) give one row each: ``{"id": stem, "name", "path", "text"}``.
    """
    if not path.is_dir():
        yield from iter_records(path, fmt)
        return
    files = sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name)
    number = 0
    for file in files:
        suffix = os.path.splitext(file.name)[1].lower()
        if suffix in TEXT_SUFFIXES:
            number += 1
            with file.open("rb") as fh:
                text = fh.read().decode("utf-8-sig")
            stem = os.path.splitext(file.name)[0]
            yield number, {"id": stem, "name": file.name, "path": str(file), "text": text}
        elif suffix in DATA_SUFFIXES:
            for _, row in iter_records(file, fmt):
                number += 1
                if isinstance(row, RejectedRow):
                    row = row.model_copy(update={"row": number})
                yield number, row
    if number == 0:
        raise ValueError(
            f"folder {path} holds no input files (data: {', '.join(DATA_SUFFIXES)}; "
            f"documents: {', '.join(TEXT_SUFFIXES)})"
        )


def results_asset(dag_id: str, group: str, run_path: str | None = None) -> Asset:
    """The Asset a run's results are published as: one per (DAG, task group), under the run path.

    Each run's files live in a sub-folder per run id; the asset event's ``extra`` names them.
    """
    base = str(run_path or default_run_path()).rstrip("/")
    scheme, sep, rest = base.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]  # drop the conn_id: it is not part of the data's identity
    uri = f"{scheme}{sep}{rest}/{safe_segment(dag_id)}/{safe_segment(group)}"
    return Asset(uri=uri, name=f"llm_batch_results__{safe_segment(dag_id)}__{safe_segment(group)}")


def _publish(context: Any, outlets: Sequence[Any], summary: RunSummary) -> None:
    """Attach the run's file locations and counts to this task's asset events."""
    extra = {
        "run_path": summary.run_path,
        "results": summary.files.get("results", f"{summary.run_path}/results.jsonl"),
        "succeeded": summary.succeeded,
        "unresolved": summary.unresolved,
        "dead_letter": summary.dead_letter,
        "inputs": summary.inputs,
    }
    events = context.get("outlet_events")
    if events is None:
        return
    for outlet in outlets:
        if isinstance(outlet, Asset):
            events[outlet].extra = extra


def metric_tags(context: Any) -> dict[str, str]:
    ti = context["ti"]
    return {"dag_id": str(ti.dag_id), "task_id": str(ti.task_id)}


def log_cost(log: Any, summary: RunSummary) -> None:
    """One line with the run's tokens and dollars; unpriced models and cache hits when there are any."""
    cost = summary.cost
    line = "%d input / %d output tokens, $%.4f at batch prices (synchronous $%.4f, saved $%.4f)"
    args: list[Any] = [
        summary.usage.input_tokens,
        summary.usage.output_tokens,
        cost.batch_usd,
        cost.standard_usd,
        cost.savings_usd,
    ]
    if cost.unpriced_models or cost.unpriced_tokens:
        line += "; %d tokens of unpriced models not counted: %s"
        args += [cost.unpriced_tokens, ", ".join(cost.unpriced_models) or "?"]
    if summary.cached > 0:
        line += "; %d answered from the cache, saving $%.4f"
        args += [summary.cached, summary.cache_savings_usd]
    log.info(line, *args)


class _BatchOperatorMixin:
    """Connection and result-cache handling shared by the batch operators.

    Submit, collect and retry of one run must use the same cache settings: submit serves hits
    from it, collect and retry store the successes in it (``llm_batch_group`` passes them to all
    three).
    """

    provider: str | None
    conn_id: str | None
    run_path: str | ObjectStoragePath | None
    cache_path: str | ObjectStoragePath | None
    use_cache: bool
    cache_ttl: timedelta | float | None

    def _hook(self, provider: str | None = None, conn_id: str | None = None) -> LLMBatchHook:
        """The hook for a run: the run's provider; this task's ``conn_id`` if set, else the run's."""
        return LLMBatchHook(conn_id=self.conn_id or conn_id, provider=provider or self.provider)

    def _cache(self) -> ResultCache | None:
        """The result cache: ``cache_path``, else ``<run_path>/_cache``; None when ``use_cache`` is off."""
        if not self.use_cache:
            return None
        path = self.cache_path
        if not path:
            path = str(self.run_path or default_run_path()).rstrip("/") + "/" + CACHE_FOLDER
        ttl = seconds_of(self.cache_ttl)
        return ResultCache(as_storage_path(path), ttl=None if ttl is None else timedelta(seconds=ttl))


class SubmitBatchOperator(_BatchOperatorMixin, BaseOperator):
    """Render input rows into requests and submit them as one or more provider batches.

    Input is one of:

    - ``input_path``: a JSONL, CSV or Parquet file, or a folder of such files or of documents
      (``.md``/``.txt``: one request per document, row ``{"id", "name", "path", "text"}``), on
      any ObjectStoragePath (``file://``, ``s3://conn@bucket/key`` …);
    - ``records``: a list of dicts, e.g. another task's XCom;
    - ``requests_path``: a JSONL file of ready requests (``LLMRequest`` lines, or native OpenAI
      ``{"custom_id", "method", "url", "body"}`` / Anthropic ``{"custom_id", "params"}`` lines).

    Rows become requests through ``prompt_template`` (Jinja over the row's columns, e.g.
    ``"Classify: {{ subject }}\\n{{ body }}"``), ``prompt_template_param`` (the name of a DAG
    param holding such a template), or ``build_request`` (a callable ``row -> LLMRequest | dict``).
    ``prompt_template`` and ``system`` are rendered per row, not by Airflow's templating.

    Rows that cannot become a request go to ``rejects.jsonl`` with the reason; nothing is paid for
    them. A second try of this task (after a crash or a retry) re-attaches to the batches its
    earlier try created.

    Returns (XCom) the run handle: run directory, provider, conn_id and batch ids.

    :param provider: ``openai``, ``openai_compatible``, ``anthropic``, ``gemini`` or ``bedrock``;
        default from the connection (an ``aws`` connection is Bedrock).
    :param conn_id: Airflow connection; default ``llm_<provider>_default`` (``aws_default`` for
        Bedrock, whose connection carries the ``bedrock_*`` extras).
    :param model: model for every request (rows/requests may set their own).
    :param max_tokens: output-token limit per request.
    :param system: system prompt (a Jinja template over the row).
    :param response_schema: JSON schema the answer must follow (structured output).
    :param id_field: column holding each row's custom_id (default: ``custom_id``/``id``, else row-N).
    :param metadata: tags such as a cost centre, attached to the batches where the provider keeps tags.
    :param run_path: base ObjectStoragePath of run directories; default ``[batch_provider] run_path``,
        ``$BATCH_PROVIDER_RUN_PATH`` or ``file:///tmp/batch_provider``.
    :param group: run directory name under the DAG run; default the task group (or task id).
    :param input_format: ``jsonl``, ``csv`` or ``parquet`` when the suffix does not say.
    :param max_requests_per_batch: lower the provider's per-batch request limit.
    :param max_bytes_per_batch: lower the provider's per-batch byte limit.
    :param max_cost_usd: refuse to create any batch when the estimated ceiling (every request
        using its whole ``max_tokens``) is over this many dollars; the task fails without retry.
    :param cache_path: result cache location; default ``<run_path>/_cache``. Requests answered
        before (same provider, model, prompt and options) are served from it and not paid again.
    :param use_cache: ``False`` turns the result cache off for this task.
    :param cache_ttl: cache entries older than this (seconds or timedelta) are misses.
    :param allow_unknown_models: send requests for OpenAI/Anthropic models this package does not
        know (a model newer than its price table) instead of rejecting them.
    """

    template_fields: Sequence[str] = (
        "provider",
        "conn_id",
        "input_path",
        "records",
        "requests_path",
        "model",
        "max_tokens",
        "metadata",
        "run_path",
        "group",
        "cache_path",
    )
    template_fields_renderers = {"metadata": "json", "records": "json"}
    ui_color = "#d4e8f7"
    operator_extra_links = batch_links()

    def __init__(
        self,
        *,
        provider: str | None = None,
        conn_id: str | None = None,
        input_path: str | ObjectStoragePath | None = None,
        records: list[dict[str, Any]] | None = None,
        requests_path: str | ObjectStoragePath | None = None,
        prompt_template: str | None = None,
        prompt_template_param: str | None = None,
        build_request: Callable[[dict[str, Any]], LLMRequest | dict[str, Any]] | None = None,
        model: str | None = None,
        max_tokens: int | str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        response_schema: dict[str, Any] | None = None,
        id_field: str | None = None,
        kind: str = RequestKind.CHAT.value,
        metadata: Mapping[str, str] | None = None,
        run_path: str | ObjectStoragePath | None = None,
        group: str | None = None,
        input_format: str | None = None,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
        max_cost_usd: float | None = None,
        cache_path: str | ObjectStoragePath | None = None,
        use_cache: bool = True,
        cache_ttl: timedelta | float | None = None,
        allow_unknown_models: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        given = [
            n
            for n, v in (("input_path", input_path), ("records", records), ("requests_path", requests_path))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of input_path, records or requests_path (got {given or 'none'})"
            )
        builders = [
            n
            for n, v in (
                ("prompt_template", prompt_template),
                ("prompt_template_param", prompt_template_param),
                ("build_request", build_request),
            )
            if v is not None
        ]
        if len(builders) > 1:
            raise ValueError(
                f"give at most one of prompt_template, prompt_template_param, build_request (got {builders})"
            )
        if requests_path is None and not builders:
            raise ValueError(
                "rows need a prompt_template, prompt_template_param or build_request to become requests"
            )
        self.provider = provider
        self.conn_id = conn_id
        self.input_path = input_path
        self.records = records
        self.requests_path = requests_path
        self.prompt_template = prompt_template
        self.prompt_template_param = prompt_template_param
        self.build_request = build_request
        self.model = model
        self.max_tokens = max_tokens
        self.system = system
        self.temperature = temperature
        self.response_schema = response_schema
        self.id_field = id_field
        self.kind = kind
        self.metadata = metadata
        self.run_path = run_path
        self.group = group
        self.input_format = input_format
        self.max_requests_per_batch = max_requests_per_batch
        self.max_bytes_per_batch = max_bytes_per_batch
        self.max_cost_usd = max_cost_usd
        self.allow_unknown_models = allow_unknown_models
        self.cache_path = cache_path
        self.use_cache = use_cache
        self.cache_ttl = cache_ttl

    def _group(self) -> str:
        if self.group:
            return self.group
        task_group = getattr(self, "task_group", None)
        if task_group is not None and task_group.group_id:
            return task_group.group_id
        return self.task_id

    def _rows(self) -> Iterator[tuple[int, dict[str, Any] | RejectedRow]]:
        if self.records is not None:
            return iter_list(list(self.records))
        source = self.input_path if self.input_path is not None else self.requests_path
        return iter_input_rows(as_storage_path(source), self.input_format)

    def _builder(self, context: Any) -> RequestBuilder:
        template = self.prompt_template
        if self.prompt_template_param:
            template = context["params"][self.prompt_template_param]
        return RequestBuilder(
            template=template,
            build=self.build_request,
            system=self.system,
            model=self.model or None,
            max_tokens=int(self.max_tokens) if self.max_tokens not in (None, "") else None,
            temperature=self.temperature,
            id_field=self.id_field,
            response_schema=self.response_schema,
            kind=self.kind,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        map_index = -1 if map_index is None else map_index
        run_key = RunKey(dag_id=ti.dag_id, task_id=ti.task_id, run_id=context["run_id"], map_index=map_index)
        base = as_storage_path(self.run_path or default_run_path())
        run_dir = run_directory(
            base, dag_id=ti.dag_id, run_id=context["run_id"], group=self._group(), map_index=map_index
        )
        hook = self._hook()
        provider = hook.get_provider()
        items = self._builder(context).render(self._rows())
        cache = self._cache()
        tags = metric_tags(context)
        self.log.info(
            "Submitting %s batch run into %s (connection %r, cache %s)",
            provider.value,
            run_dir,
            hook.conn_id,
            cache.root if cache is not None else "off",
        )

        async def submit() -> RunHandle:
            async with hook.get_backend() as backend:
                return await submit_run(
                    backend,
                    items,
                    run_dir,
                    run_key=run_key,
                    conn_id=hook.conn_id,
                    tags={str(k): str(v) for k, v in (self.metadata or {}).items()},
                    max_requests_per_batch=self.max_requests_per_batch,
                    max_bytes_per_batch=self.max_bytes_per_batch,
                    max_cost_usd=self.max_cost_usd,
                    cache=cache,
                    on_created=metrics.batch_created_counter(tags),
                    allow_unknown_models=self.allow_unknown_models,
                )

        try:
            handle = run_sync(submit())
        except BudgetExceededError as exc:
            self.log.error("%s", exc)
            raise TaskBudgetExceededError(str(exc)) from exc
        metrics.rows_rejected(provider.value, handle.counts.rejected, tags)
        urls = persist_batch_links(context, provider, handle.batch_ids, hook.get_base_url())
        self.log.info(
            "%d inputs: %d submitted in %d batch(es), %d rejected (see %s), %d answered from cache",
            handle.counts.inputs,
            handle.counts.submitted,
            len(handle.batches),
            handle.counts.rejected,
            run_dir.rejects,
            handle.counts.cached,
        )
        for ref, url in zip(handle.batches, urls, strict=True):
            self.log.info("Batch %s (%d requests): %s", ref.batch_id, ref.request_count, url)
        return handle.model_dump(mode="json")


class CollectBatchOperator(_BatchOperatorMixin, BaseOperator):
    """Download the results of every batch of a run into its run directory.

    Writes ``results.jsonl`` (successes), ``errors.jsonl`` (per-item errors, expired and cancelled
    items, each marked retryable or not) and ``manifest.json``. Partial results of expired or
    cancelled batches are kept. Returns ``RunSummary.for_xcom()`` plus the ``handle``.

    :param handle: the submit task's handle; default the only upstream task's return value.
    :param results_asset: an Asset to emit when the results are written, with the run's paths
        and counts in the event's ``extra``.
    :param conn_id: use this connection instead of the one recorded in the handle.
    :param run_path, cache_path, use_cache, cache_ttl: the result cache successes are stored in;
        the same values as the submit task's (see :class:`SubmitBatchOperator`).
    """

    template_fields: Sequence[str] = ("handle", "run_path", "cache_path")
    ui_color = "#e0f0d9"

    def __init__(
        self,
        *,
        handle: Any = None,
        results_asset: Asset | None = None,
        provider: str | None = None,
        conn_id: str | None = None,
        run_path: str | ObjectStoragePath | None = None,
        cache_path: str | ObjectStoragePath | None = None,
        use_cache: bool = True,
        cache_ttl: timedelta | float | None = None,
        **kwargs: Any,
    ):
        outlets = list(kwargs.pop("outlets", None) or [])
        if isinstance(results_asset, Asset):
            outlets.append(results_asset)
        super().__init__(outlets=outlets, **kwargs)
        self.handle = handle
        self.provider = provider
        self.conn_id = conn_id
        self.run_path = run_path
        self.cache_path = cache_path
        self.use_cache = use_cache
        self.cache_ttl = cache_ttl

    def execute(self, context: Any) -> dict[str, Any]:
        handle = upstream_handle(self, context, self.handle)
        hook = self._hook(handle.provider.value, handle.conn_id)
        run_dir = run_dir_of(handle)
        cache = self._cache()

        async def collect() -> RunSummary:
            async with hook.get_backend() as backend:
                return await collect_run(backend, handle, run_dir, cache=cache)

        summary = run_sync(collect())
        self.log.info(
            "Attempt %d collected: %d succeeded, %d unresolved (%s), %d rejected of %d inputs; files in %s",
            handle.attempt,
            summary.succeeded,
            summary.unresolved,
            summary.unresolved_by_status,
            summary.rejected,
            summary.inputs,
            summary.run_path,
        )
        log_cost(self.log, summary)
        _publish(context, self.outlets, summary)
        return {**summary.for_xcom(), "handle": handle.model_dump(mode="json")}


class RetryBatchOperator(_BatchOperatorMixin, BaseOperator):
    """Resubmit the retryable failures of a run until they succeed or attempts run out.

    Each round: ``resubmit_retryable`` (rate limits, server errors, expired and cancelled items;
    never invalid requests) → wait in the triggerer (``deferrable=True``) or in the worker →
    collect. Then every item still unresolved goes to ``dead_letter.jsonl`` and the manifest is
    final. Re-running this task re-attaches to the attempts already created.

    Returns ``RunSummary.for_xcom()`` of the final run.

    :param handle: the handle of the last collected attempt; default the upstream task's value
        (the collect task returns it as ``handle``).
    :param max_attempts: attempts in all, the first submission included.
    :param fail_on_dead_letter: fail the task when any item ends in the dead letter file.
    :param attempt_timeout: how long to wait for each resubmitted attempt.
    :param cancel_on_timeout: cancel an attempt's batches when its wait times out.
    :param results_asset: Asset emitted with the final results.
    :param conn_id: use this connection instead of the one recorded in the handle.
    :param run_path, cache_path, use_cache, cache_ttl: the result cache successes are stored in;
        the same values as the submit task's (see :class:`SubmitBatchOperator`).
    """

    template_fields: Sequence[str] = ("handle", "max_attempts", "run_path", "cache_path")
    ui_color = "#f7e4d4"
    operator_extra_links = batch_links()

    def __init__(
        self,
        *,
        handle: Any = None,
        max_attempts: int | str = 3,
        fail_on_dead_letter: bool = False,
        deferrable: bool = True,
        attempt_timeout: timedelta | float = timedelta(hours=25),
        poll_interval: float = DEFAULT_POLL_INTERVAL_MIN,
        max_poll_interval: float = DEFAULT_POLL_INTERVAL_MAX,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = False,
        results_asset: Asset | None = None,
        metadata: Mapping[str, str] | None = None,
        provider: str | None = None,
        conn_id: str | None = None,
        run_path: str | ObjectStoragePath | None = None,
        cache_path: str | ObjectStoragePath | None = None,
        use_cache: bool = True,
        cache_ttl: timedelta | float | None = None,
        **kwargs: Any,
    ):
        outlets = list(kwargs.pop("outlets", None) or [])
        if isinstance(results_asset, Asset):
            outlets.append(results_asset)
        super().__init__(outlets=outlets, **kwargs)
        if isinstance(max_attempts, int) and max_attempts < 1:
            raise ValueError("max_attempts counts the first submission too: it must be at least 1")
        self.handle = handle
        self.max_attempts = max_attempts
        self.fail_on_dead_letter = fail_on_dead_letter
        self.deferrable = deferrable
        self.attempt_timeout = attempt_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.metadata = metadata
        self.provider = provider
        self.conn_id = conn_id
        self.run_path = run_path
        self.cache_path = cache_path
        self.use_cache = use_cache
        self.cache_ttl = cache_ttl
        self._watching: RunHandle | None = None

    def _latest_handle(self, context: Any) -> RunHandle:
        value = self.handle
        if value is None:
            upstream = sorted(self.upstream_task_ids)
            if len(upstream) == 1:
                value = context["ti"].xcom_pull(task_ids=upstream[0])
        if isinstance(value, dict) and isinstance(value.get("handle"), dict):
            value = value["handle"]  # the collect task's summary carries the handle it collected
        return upstream_handle(self, context, value)

    def execute(self, context: Any) -> dict[str, Any]:
        handle = self._latest_handle(context)
        persist_batch_links(context, handle.provider, [], None)  # slots filled when batches exist
        return self._next_round(context, handle)

    def _next_round(self, context: Any, handle: RunHandle) -> dict[str, Any]:
        while True:
            hook = self._hook(handle.provider.value, handle.conn_id)
            run_dir = run_dir_of(handle)
            ledger = Ledger.load(run_dir)
            if ledger is None:
                raise AirflowException(f"{run_dir} has no ledger: was the submit task run?")

            new = run_sync(self._resubmit(hook, handle, ledger, metric_tags(context)))
            if new is None:
                return self._finish(context, handle)
            self.log.info(
                "Attempt %d: %d request(s) resubmitted in %d batch(es)",
                new.attempt,
                new.counts.submitted,
                len(new.batches),
            )
            persist_batch_links(context, new.provider, new.batch_ids, hook.get_base_url())
            if not new.batches:
                handle = new
                continue
            if self.deferrable:
                self.defer(
                    trigger=BatchWaitTrigger(
                        conn_id=hook.conn_id,
                        provider=new.provider.value,
                        batch_ids=new.batch_ids,
                        deadline=deadline_after(self.attempt_timeout),
                        poll_interval_min=self.poll_interval,
                        poll_interval_max=self.max_poll_interval,
                        cancel_on_kill=self.cancel_on_kill,
                    ),
                    method_name="resume",
                    kwargs={"handle": new.model_dump(mode="json")},
                    timeout=_defer_timeout(self.attempt_timeout, self.max_poll_interval),
                )
            states = self._wait_in_worker(hook, new)
            record_waits(new.provider.value, {"states": states}, metric_tags(context))
            self._collect(hook, new)
            handle = new

    async def _resubmit(
        self, hook: LLMBatchHook, handle: RunHandle, ledger: Ledger, metric_labels: dict[str, str]
    ) -> RunHandle | None:
        async with hook.get_backend() as backend:
            return await resubmit_retryable(
                backend,
                handle,
                run_dir_of(handle),
                run_key=ledger.run_key,
                tags={str(k): str(v) for k, v in (self.metadata or {}).items()},
                max_attempts=int(self.max_attempts),
                on_created=metrics.batch_created_counter(metric_labels),
            )

    def _wait_in_worker(self, hook: LLMBatchHook, handle: RunHandle) -> dict[str, dict[str, Any]]:
        """Wait for the attempt's batches; their final states as a trigger event carries them."""
        self._watching = handle
        deadline = deadline_after(self.attempt_timeout)

        async def wait() -> dict[str, Any]:
            async with hook.get_backend() as backend:
                return await watch_batches(
                    backend,
                    handle.batch_ids,
                    deadline=datetime.fromisoformat(deadline) if deadline else None,
                    poll_interval_min=self.poll_interval,
                    poll_interval_max=self.max_poll_interval,
                    on_progress=lambda p: self.log.info("%s", p.line()),
                )

        states = run_sync(wait())
        self._watching = None
        return {k: v.model_dump(mode="json") for k, v in states.items()}

    def _collect(self, hook: LLMBatchHook, handle: RunHandle) -> RunSummary:
        cache = self._cache()

        async def collect() -> RunSummary:
            async with hook.get_backend() as backend:
                return await collect_run(backend, handle, run_dir_of(handle), cache=cache)

        summary = run_sync(collect())
        self.log.info(
            "Attempt %d collected: %d succeeded, %d unresolved (%s) of %d inputs",
            handle.attempt,
            summary.succeeded,
            summary.unresolved,
            summary.unresolved_by_status,
            summary.inputs,
        )
        log_cost(self.log, summary)
        return summary

    def resume(
        self, context: Any, event: dict[str, Any], handle: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        current = RunHandle.model_validate(handle) if handle else self._ledger_handle(context)
        hook = self._hook(current.provider.value, current.conn_id)
        status = event.get("status")
        if status == "timeout":
            if self.cancel_on_timeout:
                _cancel(hook, current.batch_ids, self.log)
            raise AirflowException(
                f"attempt {current.attempt} did not end within attempt_timeout: {event.get('message')}"
            )
        if status != "success":
            raise AirflowException(f"waiting for attempt {current.attempt} failed: {event.get('message')}")
        record_waits(current.provider.value, event, metric_tags(context))
        self._collect(hook, current)
        return self._next_round(context, current)

    def _ledger_handle(self, context: Any) -> RunHandle:
        """The latest attempt's handle, rebuilt from the ledger (when the deferral's kwargs are
        not handed back, as in ``dag.test()``)."""
        first = self._latest_handle(context)
        run_dir = run_dir_of(first)
        ledger = Ledger.load(run_dir)
        if ledger is None:
            raise AirflowException(f"{run_dir} has no ledger: was the submit task run?")
        return handle_for(ledger, run_dir, attempt=max(ledger.attempts), conn_id=first.conn_id)

    def _finish(self, context: Any, handle: RunHandle) -> dict[str, Any]:
        hook = self._hook(handle.provider.value, handle.conn_id)
        backend = hook.get_backend()
        try:
            summary = write_dead_letter(backend, run_dir_of(handle))
        finally:
            run_sync(backend.aclose())
        metrics.run_finished(summary, metric_tags(context))
        self.log.info(
            "Run final after %d attempt(s): %d succeeded, %d in dead letter, %d rejected of %d inputs",
            summary.attempts,
            summary.succeeded,
            summary.dead_letter,
            summary.rejected,
            summary.inputs,
        )
        log_cost(self.log, summary)
        if summary.dead_letter and self.fail_on_dead_letter:
            raise AirflowFailException(
                f"{summary.dead_letter} item(s) still failed after {summary.attempts} attempt(s); "
                f"see {summary.files.get('dead_letter', summary.run_path + '/dead_letter.jsonl')}"
            )
        _publish(context, self.outlets, summary)
        return summary.for_xcom()

    def on_kill(self) -> None:
        if self.cancel_on_kill and self._watching is not None:
            handle = self._watching
            _cancel(self._hook(handle.provider.value, handle.conn_id), handle.batch_ids, self.log)


def record_waits(provider: str, event: Mapping[str, Any], tags: Mapping[str, str]) -> None:
    """``batch_wait`` for each ended batch of a trigger event whose state carries both times."""
    for state in (event.get("states") or {}).values():
        created, ended = state.get("created_at"), state.get("ended_at")
        if not (created and ended and state.get("ending")):
            continue
        seconds = (_as_datetime(ended) - _as_datetime(created)).total_seconds()
        metrics.batch_waited(provider, max(seconds, 0.0), str(state["ending"]), tags)


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _defer_timeout(timeout: timedelta | float | None, max_poll_interval: float) -> timedelta | None:
    """Airflow's own deferral timeout: a backstop after the trigger's deadline, so the trigger
    normally reports the timeout itself (with the batches' last states)."""
    seconds = seconds_of(timeout)
    if seconds is None:
        return None
    return timedelta(seconds=seconds + max_poll_interval + 300)


def _cancel(hook: LLMBatchHook, batch_ids: list[str], log: Any) -> dict[str, str]:
    async def cancel() -> dict[str, str]:
        async with hook.get_backend() as backend:
            return await cancel_batches(backend, batch_ids, log=log)

    return run_sync(cancel())
