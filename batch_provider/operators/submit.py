"""Submit: render input rows into requests and submit them as one or more provider batches.

Invariants:
- XCom carries only the small run handle (paths, ids, counts): never request or result data,
  never a key.
- The run key is (dag_id, task_id, run_id, map_index), never try_number: a retried submit task
  re-attaches to the batches its earlier try created instead of paying for them again.
- Every run writes under its own run directory ``<run_path>/<dag_id>/<run_id>/<group>[/map-N]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from batch_provider import metrics
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import RunKey
from batch_provider.core.models import LLMRequest, RejectedRow, RequestKind
from batch_provider.core.output_type import (
    DEFAULT_RETRY_INVALID_OUTPUT,
    OutputSpec,
    output_spec,
    save_output_spec,
)
from batch_provider.core.records import InputError, detect_format, iter_list
from batch_provider.core.render import RequestBuilder, SystemPrompt
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.links.batch import batch_links, persist_batch_links
from batch_provider.operators._common import (
    _BatchOperatorMixin,
    as_storage_path,
    default_run_path,
    metric_tags,
    run_sync,
)
from batch_provider.operators.input_rows import DATA_SUFFIXES, TEXT_SUFFIXES, iter_input_rows
from batch_provider.operators.submit_options import (
    RunPathError,
    TaskBudgetExceededError,
    TaskEmptyInputError,
    TaskInputError,
    TaskOptionError,
    TaskRejectsError,
    TaskTemplateError,
    check_run_path,
    check_submit_options,
    option_problem,
    task_errors,
)

__all__ = [
    "DATA_SUFFIXES",
    "TEXT_SUFFIXES",
    "RunPathError",
    "SubmitBatchOperator",
    "TaskBudgetExceededError",
    "TaskEmptyInputError",
    "TaskInputError",
    "TaskOptionError",
    "TaskRejectsError",
    "TaskTemplateError",
    "iter_input_rows",
]


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
    :param output_type: the answer's type (structured output): a pydantic model, ``TypedDict``,
        dataclass, ``list[...]`` of one, or a JSON schema dict. Sent as each provider's
        structured-output directive; every answer is validated at collect: valid ones carry
        ``parsed``, others get status ``invalid_output`` (raw text and errors in ``errors.jsonl``).
    :param response_schema: a JSON schema: the same as ``output_type`` given a dict.
    :param retry_invalid_output: how many times the retry task resends a row whose answer did not
        validate (default 1; 0: never).
    :param model_column, system_column, max_tokens_column, temperature_column: the row column
        whose value (when not blank) sets that request's model, system prompt, max_tokens or
        temperature instead of the task's. Requests are split one model per batch where the
        provider needs it (OpenAI, Bedrock, Gemini); Anthropic batches mix models.
    :param id_field: column holding each row's custom_id (default: ``custom_id``/``id``, else row-N).
    :param metadata: tags such as a cost centre, attached to the batches where the provider keeps tags.
    :param run_path: base ObjectStoragePath of run directories; default ``[batch_provider] run_path``,
        ``$BATCH_PROVIDER_RUN_PATH`` or ``file:///tmp/batch_provider``.
    :param group: run directory name under the DAG run; default the task group (or task id).
    :param input_format: ``jsonl``, ``csv`` or ``parquet`` when the suffix does not say.
    :param max_requests_per_batch: lower the provider's per-batch request limit.
    :param max_bytes_per_batch: lower the provider's per-batch byte limit.
    :param max_cost_usd: refuse to create any batch when the estimated ceiling (every request
        using its whole ``max_tokens``) is over this many dollars, or when a model has no price;
        the task fails without retry.
    :param cache_path: result cache location; default ``<run_path>/_cache``. Requests answered
        before (same provider, model, prompt and options) are served from it and not paid again.
    :param use_cache: ``False`` turns the result cache off for this task.
    :param cache_ttl: cache entries older than this (seconds or timedelta) are misses.
    :param allow_unknown_models: send requests for OpenAI, Anthropic, Gemini or Bedrock models
        this package does not know (a model newer than its model data) instead of rejecting them.
    :param extra: provider options merged last into every request's native body (e.g.
        ``{"top_p": 0.9}``, or Anthropic ``{"metadata": {...}}``), for what the neutral options lack.
    :param cache_system_prompt: ask the provider to cache the system prompt (Anthropic and
        Anthropic on Bedrock: ``cache_control`` on its last block; Bedrock Converse: a
        ``cachePoint``; OpenAI and Gemini cache shared prefixes by themselves, the system prompt
        is sent first). ``system`` may also be a list of blocks (strings or ``{"type": "text",
        "text": …}``), each a template over the row.
    :param render_missing_as_empty: render null and blank values of columns the template uses as
        empty text; by default such a row is rejected, naming row and column.
    :param max_rejected_fraction: fail the task, sending nothing, when more than this share of
        the rows is rejected (e.g. ``0.05``); by default only a run whose every row is rejected
        fails.
    :param on_empty: ``"skip"`` (default): an input without rows skips this task and, through
        it, wait, collect and retry, and the run succeeds; ``"fail"``: the task fails.

    ``records`` are data: their strings are never rendered as templates (an ``XComArg`` is still
    resolved). No templated argument can read a connection (``{{ conn… }}`` fails the task).
    """

    literal_fields: Sequence[str] = ("records",)

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
        system: SystemPrompt | None = None,
        temperature: float | None = None,
        response_schema: dict[str, Any] | None = None,
        output_type: Any = None,
        retry_invalid_output: int = DEFAULT_RETRY_INVALID_OUTPUT,
        model_column: str | None = None,
        system_column: str | None = None,
        max_tokens_column: str | None = None,
        temperature_column: str | None = None,
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
        cache_system_prompt: bool = False,
        render_missing_as_empty: bool = False,
        extra: dict[str, Any] | None = None,
        max_rejected_fraction: float | None = None,
        on_empty: str = "skip",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        check_submit_options(
            on_empty=on_empty,
            max_rejected_fraction=max_rejected_fraction,
            sources={"input_path": input_path, "records": records, "requests_path": requests_path},
            builders={
                "prompt_template": prompt_template,
                "prompt_template_param": prompt_template_param,
                "build_request": build_request,
            },
        )
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
        if output_type is not None and response_schema is not None:
            raise ValueError("give output_type or response_schema (its alias), not both")
        self.output_type = output_type if output_type is not None else response_schema
        self.response_schema = response_schema
        self.retry_invalid_output = retry_invalid_output
        self.output_spec: dict[str, Any] | None = None
        """The output type as JSON (schema and import path): what survives DAG serialisation."""
        if self.output_type is not None:
            spec = output_spec(self.output_type, retry_invalid_output=retry_invalid_output)
            self.output_spec = spec.model_dump(mode="json")
        self.row_columns = {
            name: column
            for name, column in (
                ("model", model_column),
                ("system", system_column),
                ("max_tokens", max_tokens_column),
                ("temperature", temperature_column),
            )
            if column
        }
        self.id_field = id_field
        self.kind = kind
        self.metadata = metadata
        self.group = group
        self.input_format = input_format
        self.max_requests_per_batch = max_requests_per_batch
        self.max_bytes_per_batch = max_bytes_per_batch
        self.max_cost_usd = max_cost_usd
        self.allow_unknown_models = allow_unknown_models
        self.cache_system_prompt = cache_system_prompt
        self.render_missing_as_empty = render_missing_as_empty
        self.extra = extra
        self.max_rejected_fraction = max_rejected_fraction
        self.on_empty = on_empty
        self._set_run_options(
            provider=provider,
            conn_id=conn_id,
            run_path=run_path,
            cache_path=cache_path,
            use_cache=use_cache,
            cache_ttl=cache_ttl,
        )

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

    def _same_columns(self) -> bool:
        """Whether every row has the same columns: a single CSV or Parquet file."""
        if self.input_path is None:
            return False
        path = as_storage_path(self.input_path)
        try:
            return path.is_file() and detect_format(path, self.input_format) in ("csv", "parquet")
        except InputError:
            return False

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
            response_schema=self.output_spec["json_schema"] if self.output_spec else None,
            kind=self.kind,
            columns=self.row_columns,
            render_missing_as_empty=self.render_missing_as_empty,
            cache_system_prompt=self.cache_system_prompt,
            extra=self.extra,
        )

    def _options_from_task(self) -> bool:
        """Whether the options come from the task alone (a prompt template): rows of a requests file
        or a ``build_request`` callable may carry their own."""
        return self.prompt_template is not None or self.prompt_template_param is not None

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
        check_run_path(run_dir)
        if self.output_spec is not None:
            save_output_spec(run_dir.root, OutputSpec.model_validate(self.output_spec))
        builder = self._builder(context)
        items = builder.render(self._rows(), same_columns=self._same_columns())
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
                problem = option_problem(backend, builder) if self._options_from_task() else None
                if problem is not None:
                    raise TaskOptionError(problem)
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
                    max_rejected_fraction=self.max_rejected_fraction,
                )

        with task_errors(self.on_empty, self.log):
            handle = run_sync(submit())
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
