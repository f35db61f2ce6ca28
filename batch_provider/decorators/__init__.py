"""TaskFlow decorators: ``@task.batch_llm`` (see :mod:`batch_provider.decorators.batch_llm`)."""

from batch_provider.decorators.batch_llm import batch_llm_task

__all__ = ["batch_llm_task"]
