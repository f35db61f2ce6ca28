"""Operators for one LLM batch run: submit, collect, retry.

The public import path of the operators and their helpers: ``SubmitBatchOperator`` lives in
:mod:`~batch_provider.operators.submit`, ``CollectBatchOperator`` with the results Asset and the
cost line in :mod:`~batch_provider.operators.collect`, ``RetryBatchOperator`` in
:mod:`~batch_provider.operators.retry`, and what they share in :mod:`~batch_provider.operators._common`.
"""

from __future__ import annotations

from batch_provider.operators._common import CACHE_FOLDER, metric_tags
from batch_provider.operators.collect import CollectBatchOperator, log_cost, results_asset
from batch_provider.operators.retry import RetryBatchOperator
from batch_provider.operators.submit import (
    DATA_SUFFIXES,
    TEXT_SUFFIXES,
    SubmitBatchOperator,
    TaskBudgetExceededError,
    iter_input_rows,
)

__all__ = [
    "CACHE_FOLDER",
    "DATA_SUFFIXES",
    "TEXT_SUFFIXES",
    "CollectBatchOperator",
    "RetryBatchOperator",
    "SubmitBatchOperator",
    "TaskBudgetExceededError",
    "iter_input_rows",
    "log_cost",
    "metric_tags",
    "results_asset",
]
