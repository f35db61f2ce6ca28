"""Callbacks for Airflow's Deadline Alerts (DAG-level ``deadline=DeadlineAlert(...)``, Airflow ≥ 3.1).

:func:`report_batch_progress` (for ``AsyncCallback``, run in the triggerer) and
:func:`report_batch_progress_sync` (for ``SyncCallback``, run by an executor) report, when the
DAG run misses its deadline, every batch the run created: its status, requests done, how long it
has run and its ETA (from its progress, else from the completion-time history), and what such
batches usually take::

    DAG(
        ...,
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=timedelta(hours=6),
            callback=AsyncCallback(report_batch_progress, kwargs={"conn_id": "llm_openai_default"}),
        ),
    )

Invariants:
- Read only: the run folders (``<run_path>/<dag_id>/<run_id>/<group>``, their ledgers) and one
  status call per batch; nothing is cancelled, written or paid for.
- The report holds ids, counts and times, never keys or request content: it is logged and
  returned as the callback's result (stored by Airflow), and handed to ``notify`` when given.
- A batch whose status cannot be read is reported with the error, not skipped, and never fails
  the others.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from datetime import UTC, datetime
from typing import Any

from batch_provider.core.history import estimate_for
from batch_provider.core.ledger import Ledger
from batch_provider.core.models import BatchRef
from batch_provider.core.rundir import RunDirectory, safe_segment
from batch_provider.core.sweeps import duration_text
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.operators._common import as_storage_path, default_run_path, run_sync

log = logging.getLogger(__name__)

__all__ = ["report_batch_progress", "report_batch_progress_sync", "run_batches"]


def run_batches(run_path: Any, dag_id: str, run_id: str) -> list[tuple[str, str, BatchRef]]:
    """(group folder, provider, batch) of every batch of the latest attempt of each run folder of
    one DAG run, in folder order."""
    base = as_storage_path(run_path) / safe_segment(dag_id) / safe_segment(run_id)
    if not base.exists():
        return []
    found: list[tuple[str, str, BatchRef]] = []
    for folder in sorted(base.iterdir(), key=lambda p: str(p.name)):
        if not folder.is_dir():
            continue
        ledger = Ledger.load(RunDirectory(folder))
        if ledger is None or not ledger.attempts:
            continue
        latest = ledger.attempts[max(ledger.attempts)]
        found.extend((str(folder.name), ledger.provider.value, c.batch) for c in latest.chunks if c.batch)
    return found


async def _batch_report(
    backend: Any, run_folder: Any, group: str, provider: str, ref: BatchRef, now: datetime
) -> dict[str, Any]:
    created = ref.created_at if ref.created_at.tzinfo else ref.created_at.replace(tzinfo=UTC)
    report: dict[str, Any] = {
        "group": group,
        "provider": provider,
        "batch_id": ref.batch_id,
        "model": ref.model,
        "requests": ref.request_count,
        "created_at": created.isoformat(),
        "running_seconds": max(0.0, (now - created).total_seconds()),
    }
    estimate = estimate_for(run_folder, provider, ref.model, ref.request_count)
    if estimate is not None:
        report["usual"] = estimate.phrase()
    try:
        state = await backend.status(ref.batch_id)
    except Exception as exc:
        report.update(status="unknown", error=f"{type(exc).__name__}: {exc}")
        return report
    total = state.counts.total or ref.request_count
    done = state.counts.done
    report.update(status=state.native_status, ended=state.is_terminal, done=done, total=total)
    elapsed = report["running_seconds"]
    eta: float | None = None
    if state.is_terminal:
        eta = 0.0
    elif 0 < done < total and elapsed > 0:
        eta = elapsed * (total - done) / done
    elif estimate is not None:
        eta = max(0.0, estimate.p50_seconds - elapsed)
    report["eta_seconds"] = eta
    return report


def _line(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['group']}: batch {r['batch_id']} status unknown ({r['error']})"
    eta = r.get("eta_seconds")
    text = (
        f"{r['group']}: batch {r['batch_id']} {r['status']}, {r.get('done', 0)}/{r.get('total', 0)} "
        f"requests done, running {duration_text(r['running_seconds'])}, "
        f"ETA {'ended' if r.get('ended') else (duration_text(eta) if eta is not None else 'unknown')}"
    )
    return text + (f" ({r['usual']})" if r.get("usual") else "")


async def report_batch_progress(
    context: dict[str, Any] | None = None,
    *,
    run_path: str | None = None,
    conn_id: str | None = None,
    notify: str | None = None,
) -> dict[str, Any]:
    """Report every batch of the DAG run that missed its deadline (see the module docstring).

    :param context: what Airflow passes (``dag_run`` with ``dag_id`` and ``run_id``; ``deadline``).
    :param run_path: the run folders' root (default: ``[batch_provider] run_path``).
    :param conn_id: connection to read statuses with (default: the provider's default connection).
    :param notify: dotted path of a callable (or coroutine function) given the report, e.g. to post
        it to a chat channel.
    :returns: ``{"dag_id", "run_id", "deadline", "batches": [...], "message"}``.
    """
    dag_run = (context or {}).get("dag_run") or {}
    dag_id, run_id = str(dag_run.get("dag_id")), str(dag_run.get("run_id"))
    root = run_path or default_run_path()
    found = await asyncio.to_thread(run_batches, root, dag_id, run_id)
    now = datetime.now(UTC)
    reports: list[dict[str, Any]] = []
    backends: dict[str, Any] = {}
    base = as_storage_path(root) / safe_segment(dag_id) / safe_segment(run_id)
    try:
        for group, provider, ref in found:
            if provider not in backends:
                backends[provider] = await LLMBatchHook(conn_id=conn_id, provider=provider).aget_backend()
            reports.append(await _batch_report(backends[provider], base / group, group, provider, ref, now))
    finally:
        for backend in backends.values():
            await backend.aclose()
    deadline = ((context or {}).get("deadline") or {}).get("deadline_time")
    running = [r for r in reports if not r.get("ended")]
    header = (
        f"DAG run {dag_id} / {run_id} missed its deadline{f' ({deadline})' if deadline else ''}: "
        f"{len(running)} of {len(reports)} batch(es) still running"
    )
    message = "\n".join([header, *(_line(r) for r in reports)])
    log.warning("%s", message)
    result = {
        "dag_id": dag_id,
        "run_id": run_id,
        "deadline": str(deadline) if deadline else None,
        "batches": reports,
        "message": message,
    }
    if notify:
        module, _, name = notify.rpartition(".")
        outcome = getattr(importlib.import_module(module), name)(result)
        if inspect.isawaitable(outcome):
            await outcome
    return result


def report_batch_progress_sync(
    context: dict[str, Any] | None = None,
    *,
    run_path: str | None = None,
    conn_id: str | None = None,
    notify: str | None = None,
) -> dict[str, Any]:
    """:func:`report_batch_progress` for a ``SyncCallback`` (run by an executor)."""
    return run_sync(report_batch_progress(context, run_path=run_path, conn_id=conn_id, notify=notify))
