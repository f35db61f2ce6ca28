"""Operators: submit, collect and retry LLM batch runs."""

from batch_provider.operators.batch import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator

__all__ = ["CollectBatchOperator", "RetryBatchOperator", "SubmitBatchOperator"]
