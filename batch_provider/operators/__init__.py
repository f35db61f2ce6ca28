"""Operators: submit, collect and retry LLM batch runs."""

from batch_provider.operators.collect import CollectBatchOperator
from batch_provider.operators.retry import RetryBatchOperator
from batch_provider.operators.submit import SubmitBatchOperator

__all__ = ["CollectBatchOperator", "RetryBatchOperator", "SubmitBatchOperator"]
