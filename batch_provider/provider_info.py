"""Provider metadata for Airflow's providers manager (connection types, hooks, triggers, links)."""

from __future__ import annotations

PROVIDER_INFO: dict = {
    "package-name": "airflow-provider-llm-batch",
    "name": "LLM Batch APIs",
    "description": "Submit, wait for, collect and retry LLM Batch API jobs (OpenAI, Anthropic, AWS Bedrock).",
    "versions": ["0.1.0"],
}
