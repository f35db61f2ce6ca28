"""The Airflow side of a sync fallback: when the first wait ends (``sync_fallback_at``), and the
fallback step the retry task runs before anything else (see :mod:`batch_provider.core.sync_fallback`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk.exceptions import AirflowException

from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.collection import rebuild_outputs
from batch_provider.core.deadline import load_deadline
from batch_provider.core.fallback_time import SyncFallbackAt, wait_seconds
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger
from batch_provider.core.sync_fallback import SyncReport, run_sync_fallback
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.operators._common import run_dir_of, run_sync, seconds_of


def submitted_at(handle: RunHandle) -> datetime:
    """When the run's first batch was about to be created, by this side's clock (the ledger's
    intents; a provider's ``created_at`` is its own clock), or now for a run without batches."""
    ledger = Ledger.load(run_dir_of(handle))
    intents = [] if ledger is None or 1 not in ledger.attempts else ledger.attempts[1].chunks
    moments = [c.intent_at for c in intents if c.intent_at is not None]
    return min(moments) if moments else datetime.now(UTC)


def first_wait_timeout(task: Any, handle: RunHandle, context: Any) -> float | None:
    """The first wait's timeout in seconds: ``task.timeout``, or less when ``sync_fallback_at``
    comes first (it then logs when the fallback starts)."""
    value: SyncFallbackAt | None = getattr(task, "sync_fallback_at", None)
    dag = context.get("dag") if hasattr(context, "get") else None
    tz = getattr(dag, "timezone", None)
    seconds, fallback = wait_seconds(seconds_of(task.timeout), value, submitted_at(handle), tz)
    if fallback:
        task.log.info(
            "The wait ends in %.0fs for the sync fallback (sync_fallback_at=%r); batches still running "
            "then are cancelled and their unanswered rows sent to the synchronous API",
            seconds,
            value,
        )
    return seconds


def fallback_step(task: Any, hook: LLMBatchHook, handle: RunHandle) -> SyncReport | None:
    """Run the fallback for ``handle``'s attempt when its wait passed its deadline; None when there
    is none to run (no deadline passed). Safe to run again: answered rows are never sent again."""
    run_dir = run_dir_of(handle)
    if load_deadline(run_dir, handle.attempt) is None:
        return None
    ledger = Ledger.load(run_dir)
    if ledger is not None and max(ledger.attempts) > handle.attempt:
        # a refused fallback left the rows to on_timeout="retry", which resubmitted them already
        return None

    async def go() -> SyncReport:
        async with hook.get_backend() as backend:
            try:
                caller = sync_caller(backend)
            except ValueError as exc:
                raise AirflowException(str(exc)) from None
            report = await run_sync_fallback(
                backend,
                caller,
                run_dir,
                handle.attempt,
                concurrency=task.sync_concurrency,
                tokens_per_minute=task.sync_tokens_per_minute,
                max_cost_usd=task.max_cost_usd,
            )
            ledger = Ledger.load(run_dir)
            assert ledger is not None
            rebuild_outputs(backend, run_dir, ledger)
            return report

    report = run_sync(go())
    if report.refused:
        task.log.warning(
            "Sync fallback not started: %s. The %d row(s) cut off go where rows cut off by a deadline go "
            "(on_timeout=%r)",
            report.refused,
            report.to_send,
            task.on_timeout,
        )
    else:
        task.log.info(
            "Sync fallback: %d row(s) answered by the synchronous API now, %d before a restart, "
            "%d without an answer, %d answer(s) not matching the output type (invalid_output)",
            report.answered,
            report.already_answered,
            len(report.unanswered),
            report.invalid_output,
        )
    return report


def fell_back(report: SyncReport | None) -> bool:
    """Whether rows of ``handle``'s attempt went to the synchronous API (then they are not
    resubmitted in a batch: the rest of the attempt's cut-off rows go to the dead letter)."""
    return report is not None and report.refused is None
