"""Batch adapters for Airflow's common-ai provider (``@task.llm_batch`` / ``LLMBatchOperator``).

Registered through the ``airflow.providers.common.ai.batch_adapters`` entry point group (see
``pyproject.toml``): the entry point's name is the ``model_id`` prefix, so
``model_id="bedrock:<model id>"`` runs on :class:`.bedrock.BedrockBatchAdapter`,
``model_id="google:<model>"`` (or ``"gemini:<model>"``) on :class:`.gemini.GeminiBatchAdapter`
and ``model_id="google-cloud:<model>"`` (or ``"google-vertex:"`` / ``"vertex:"``) on
:class:`.vertex.VertexBatchAdapter`.
common-ai imports an adapter only when a task names its prefix; this package imports common-ai
only from those modules, never from the base install.

How the adapters reach their connection: see :mod:`.connection`.
"""
