"""Helpers the operators and the sensor share: run paths, handles, coroutines, deadlines, the
result cache, metric tags and waits (deferral timeout, cancel, wait metrics)."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import json
import os
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from airflow.sdk import Asset, ObjectStoragePath

from batch_provider import metrics
from batch_provider.core.cache import ResultCache
from batch_provider.core.handle import RunHandle
from batch_provider.core.history import Timeline
from batch_provider.core.result_files import check_results_format
from batch_provider.core.rundir import RunDirectory
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.operators._templating import NoSecretTemplating
from batch_provider.triggers.batch import BatchWaitTrigger, cancel_batches

T = TypeVar("T")

DEFAULT_RUN_PATH = "file:///tmp/batch_provider"
RUN_PATH_ENV = "BATCH_PROVIDER_RUN_PATH"


def default_run_path() -> str:
    """``[batch_provider] run_path`` from Airflow's config (also ``AIRFLOW__BATCH_PROVIDER__RUN_PATH``),
    else ``$BATCH_PROVIDER_RUN_PATH``, else ``file:///tmp/batch_provider``."""
    try:
        from airflow.sdk.configuration import conf

        value = conf.get("batch_provider", "run_path", fallback=None)
    except Exception:
        value = None
    return value or os.environ.get(RUN_PATH_ENV) or DEFAULT_RUN_PATH


def as_storage_path(value: Any) -> ObjectStoragePath:
    if isinstance(value, ObjectStoragePath):
        return value
    text = str(value)
    if "://" not in text:
        text = "file://" + os.path.abspath(text)
    return ObjectStoragePath(text)


def run_dir_of(handle: RunHandle) -> RunDirectory:
    return RunDirectory(as_storage_path(handle.run_path))


def parse_handle(value: Any) -> RunHandle:
    """A RunHandle from what XCom or a rendered template gives: a dict, a model or a string."""
    if isinstance(value, RunHandle):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = ast.literal_eval(value)
    if isinstance(value, dict) and not {"run_path", "provider", "batches"} <= value.keys():
        raise ValueError(
            f"not a run handle (keys: {sorted(value)[:8]}): pass the submit task's return value, "
            "e.g. handle=submit.output"
        )
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        raise ValueError(
            f"expected the submit task's handle (a dict), got {len(value)} handles: the submit task "
            "is mapped, so map this task the same way (in the same mapped task group, or "
            ".partial(...).expand(handle=submit.output)) to get the handle of its own map index"
        )
    if not isinstance(value, dict):
        raise ValueError(
            f"expected the submit task's handle (a dict), got {type(value).__name__}: check the "
            "'handle' argument or that the submit task ran"
        )
    return RunHandle.model_validate(value)


def upstream_handle(task: Any, context: Any, handle: Any) -> RunHandle:
    """``handle`` if given, else the return value of the task's only upstream task."""
    if handle is not None:
        return parse_handle(handle)
    upstream = sorted(task.upstream_task_ids)
    if len(upstream) != 1:
        raise ValueError(
            f"task {task.task_id!r} has {len(upstream)} upstream tasks; pass handle= "
            "(e.g. submit_task.output) to say which submit task's handle to use"
        )
    value = pull_upstream(task, context, upstream[0])
    if value is None:
        raise ValueError(f"upstream task {upstream[0]!r} pushed no handle")
    return parse_handle(value)


def pull_upstream(task: Any, context: Any, upstream_id: str) -> Any:
    """The return value of task ``upstream_id`` for this task instance.

    A mapped task instance (in a mapped task group, or expanded itself) reads the value of its own
    map index when the upstream task is mapped too: map index N of ``wait``, ``collect`` and
    ``retry`` belongs to the run that map index N of ``submit`` started. Otherwise Airflow's
    default applies (the unmapped value, or every map index's)."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", None)
    if isinstance(map_index, int) and map_index >= 0 and _is_mapped(task, upstream_id):
        return ti.xcom_pull(task_ids=upstream_id, map_indexes=map_index)
    return ti.xcom_pull(task_ids=upstream_id)


def _is_mapped(task: Any, task_id: str) -> bool:
    """Whether ``task_id`` of ``task``'s DAG runs once per map index (mapped, or in a mapped group)."""
    dag = getattr(task, "dag", None)
    if dag is None or not dag.has_task(task_id):
        return False
    upstream = dag.get_task(task_id)
    return bool(getattr(upstream, "is_mapped", False)) or upstream.get_closest_mapped_task_group() is not None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous task code, also when a loop is already running here.

    ``asyncio.run`` is called outside any ``except`` block, so the coroutine's own errors are not
    chained to the "no running event loop" probe in the task log."""
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    if not running:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def deadline_after(timeout: timedelta | float | int | None) -> str | None:
    """ISO deadline ``timeout`` from now (seconds or timedelta), None for no limit."""
    if timeout is None:
        return None
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def seconds_of(value: timedelta | float | int | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


CACHE_FOLDER = "_cache"
"""The default result cache, under the run path beside the DAG folders: shared by every run."""


def metric_tags(context: Any) -> dict[str, str]:
    ti = context["ti"]
    return {"dag_id": str(ti.dag_id), "task_id": str(ti.task_id)}


def outlets_with(results_asset: Asset | None, outlets: Any) -> list[Any]:
    """The task's outlets plus its results Asset, when one is given."""
    merged = list(outlets or [])
    if isinstance(results_asset, Asset):
        merged.append(results_asset)
    return merged


class _BatchOperatorMixin(NoSecretTemplating):
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

    def _set_run_options(
        self,
        *,
        provider: str | None,
        conn_id: str | None,
        run_path: str | ObjectStoragePath | None,
        cache_path: str | ObjectStoragePath | None,
        use_cache: bool,
        cache_ttl: timedelta | float | None,
    ) -> None:
        """The connection, run-folder and result-cache options every batch operator takes."""
        self.provider = provider
        self.conn_id = conn_id
        self.run_path = run_path
        self.cache_path = cache_path
        self.use_cache = use_cache
        self.cache_ttl = cache_ttl

    def _set_result_options(self, *, keep_raw: bool, results_format: str) -> None:
        """How collected answers are written: the raw provider body kept or not, JSONL or Parquet
        (checked now, so a missing pyarrow fails the DAG, not a collect of paid batches)."""
        self.keep_raw = keep_raw
        self.results_format = check_results_format(results_format)

    def _hook(self, provider: str | None = None, conn_id: str | None = None) -> LLMBatchHook:
        """The hook for a run: the run's provider; this task's ``conn_id`` if set, else the run's."""
        return LLMBatchHook(conn_id=self.conn_id or conn_id, provider=provider or self.provider)

    def _cache(self, handle: RunHandle | None = None) -> ResultCache | None:
        """The result cache: ``cache_path``, else ``<run_path>/_cache`` when this task has a
        ``run_path``, else the one the run's submit used (``handle.cache_path``), else the default
        run path's; None when ``use_cache`` is off."""
        if not self.use_cache:
            return None
        path = self.cache_path
        if not path and not self.run_path and handle is not None:
            path = handle.cache_path
        if not path:
            path = str(self.run_path or default_run_path()).rstrip("/") + "/" + CACHE_FOLDER
        ttl = seconds_of(self.cache_ttl)
        return ResultCache(as_storage_path(path), ttl=None if ttl is None else timedelta(seconds=ttl))


def record_waits(provider: str, event: Mapping[str, Any], tags: Mapping[str, str]) -> None:
    """``batch_wait`` for each ended batch of a trigger event whose state carries both times, and
    ``batch_queue``/``batch_processing`` when it also says when the batch started."""
    for state in (event.get("states") or {}).values():
        created, ended = state.get("created_at"), state.get("ended_at")
        if not (created and ended and state.get("ending")):
            continue
        seconds = (_as_datetime(ended) - _as_datetime(created)).total_seconds()
        metrics.batch_waited(provider, max(seconds, 0.0), str(state["ending"]), tags)
        if started := state.get("started_at"):
            timeline = Timeline(_as_datetime(created), _as_datetime(started), _as_datetime(ended))
            metrics.batch_timeline(provider, timeline.queue_seconds, timeline.processing_seconds, tags)


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _defer_timeout(timeout: timedelta | float | None, max_poll_interval: float) -> timedelta | None:
    """Airflow's own deferral timeout: a backstop after the trigger's deadline, so the trigger
    normally reports the timeout itself (with the batches' last states)."""
    seconds = seconds_of(timeout)
    if seconds is None:
        return None
    return timedelta(seconds=seconds + max_poll_interval + 300)


def defer_until_ended(
    task: Any,
    hook: LLMBatchHook,
    handle: RunHandle,
    *,
    timeout: timedelta | float | None,
    method_name: str,
    kwargs: dict[str, Any] | None = None,
    expected_by: dict[str, str] | None = None,
    usual: str | None = None,
) -> None:
    """Defer ``task`` (a sensor or operator with ``poll_interval``, ``max_poll_interval`` and
    ``cancel_on_kill``) on one trigger watching every batch of ``handle`` until ``timeout``.

    A task with ``cancel_on_timeout`` and ``timeout_grace`` gets them as the trigger's
    ``cancel_at_deadline`` and ``grace_seconds``: past the deadline the trigger cancels and waits
    for the batches to end, so the task resumes with something to collect. ``expected_by`` (batch
    id → ISO time) makes the trigger report a batch still running then, once (see
    :mod:`batch_provider.operators._overdue`); ``usual`` goes into its progress lines."""
    grace = seconds_of(getattr(task, "timeout_grace", None))
    task.defer(
        trigger=BatchWaitTrigger(
            conn_id=hook.conn_id,
            provider=handle.provider.value,
            batch_ids=handle.batch_ids,
            deadline=deadline_after(timeout),
            poll_interval_min=task.poll_interval,
            poll_interval_max=task.max_poll_interval,
            cancel_on_kill=task.cancel_on_kill,
            cancel_at_deadline=bool(getattr(task, "cancel_on_timeout", False)),
            grace_seconds=grace,
            expected_by=expected_by,
            usual=usual,
        ),
        method_name=method_name,
        kwargs=kwargs,
        timeout=_defer_timeout(
            None if timeout is None else (seconds_of(timeout) or 0.0) + (grace or 0.0), task.max_poll_interval
        ),
    )


def _cancel(hook: LLMBatchHook, batch_ids: list[str], log: Any) -> dict[str, str]:
    async def cancel() -> dict[str, str]:
        async with hook.get_backend() as backend:
            return await cancel_batches(backend, batch_ids, log=log)

    return run_sync(cancel())
