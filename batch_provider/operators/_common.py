"""Helpers the operators and the sensor share: run paths, handles, coroutines, deadlines."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import json
import os
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from airflow.sdk import ObjectStoragePath

from batch_provider.core.handle import RunHandle
from batch_provider.core.rundir import RunDirectory

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
    value = context["ti"].xcom_pull(task_ids=upstream[0])
    if value is None:
        raise ValueError(f"upstream task {upstream[0]!r} pushed no handle")
    return parse_handle(value)


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
