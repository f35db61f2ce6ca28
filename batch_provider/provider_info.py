"""Provider metadata for Airflow's providers manager (connection types, hooks, triggers, links)."""

from __future__ import annotations

_HIDDEN = ["schema", "port", "login", "extra"]


def _text_field(label: str, description: str) -> dict:
    return {"label": label, "description": description, "schema": {"type": ["string", "null"]}}


_OPENAI_FIELDS = {
    "organization": _text_field(
        "Organization", "OpenAI organization id (org-...), sent as OpenAI-Organization"
    ),
    "project": _text_field("Project", "OpenAI project id (proj_...), sent as OpenAI-Project"),
}

PROVIDER_INFO: dict = {
    "package-name": "airflow-provider-llm-batch",
    "name": "LLM Batch APIs",
    "description": "Submit, wait for, collect and retry LLM Batch API jobs (OpenAI, Anthropic, "
    "Google Gemini, Vertex AI, and AWS Bedrock through an amazon-provider aws connection).",
    "versions": ["0.1.0"],
    "integrations": [
        {
            "integration-name": "LLM Batch APIs",
            "external-doc-url": "https://platform.openai.com/docs/guides/batch",
            "how-to-guide": [],
            "tags": ["ai", "service"],
        }
    ],
    "connection-types": [
        {
            "connection-type": "llm_openai",
            "hook-class-name": "batch_provider.hooks.batch.OpenAIBatchHook",
            "hook-name": "OpenAI Batch API",
            "ui-field-behaviour": {
                "hidden-fields": _HIDDEN,
                "relabeling": {"password": "API Key", "host": "Base URL (optional)"},
                "placeholders": {
                    "host": "https://api.openai.com/v1",
                    "password": "sk-...",
                },
            },
            "conn-fields": _OPENAI_FIELDS,
        },
        {
            "connection-type": "llm_openai_compatible",
            "hook-class-name": "batch_provider.hooks.batch.OpenAICompatibleBatchHook",
            "hook-name": "OpenAI-compatible Batch API",
            "ui-field-behaviour": {
                "hidden-fields": _HIDDEN,
                "relabeling": {"password": "API Key", "host": "Base URL"},
                "placeholders": {
                    "host": "https://api.example.com/v1",
                    "password": "the service's API key",
                },
            },
            "conn-fields": _OPENAI_FIELDS,
        },
        {
            "connection-type": "llm_anthropic",
            "hook-class-name": "batch_provider.hooks.batch.AnthropicBatchHook",
            "hook-name": "Anthropic Message Batches API",
            "ui-field-behaviour": {
                "hidden-fields": _HIDDEN,
                "relabeling": {"password": "API Key", "host": "Base URL (optional)"},
                "placeholders": {
                    "host": "https://api.anthropic.com",
                    "password": "sk-ant-...",
                },
            },
            "conn-fields": {
                "anthropic_version": _text_field(
                    "API version", "anthropic-version header; empty for the version the backend targets"
                ),
            },
        },
        {
            "connection-type": "llm_gemini",
            "hook-class-name": "batch_provider.hooks.batch.GeminiBatchHook",
            "hook-name": "Gemini Batch API",
            "ui-field-behaviour": {
                "hidden-fields": _HIDDEN,
                "relabeling": {"password": "API Key", "host": "Base URL (optional)"},
                "placeholders": {
                    "host": "https://generativelanguage.googleapis.com",
                    "password": "AIza...",
                },
            },
            "conn-fields": {
                "api_version": _text_field("API version", "URL version segment; empty for v1beta"),
                "inline_max_bytes": {
                    "label": "Inline max bytes",
                    "description": "Batches up to this size are sent inline; larger ones are uploaded "
                    "as a file first. Empty for the backend's default.",
                    "schema": {"type": ["integer", "null"], "minimum": 0},
                },
            },
        },
        {
            "connection-type": "llm_vertex",
            "hook-class-name": "batch_provider.hooks.batch.VertexBatchHook",
            "hook-name": "Vertex AI Batch Prediction",
            "ui-field-behaviour": {
                "hidden-fields": _HIDDEN,
                "relabeling": {
                    "password": "Service account key JSON (empty: Application Default Credentials)",
                    "host": "API base URL (optional)",
                },
                "placeholders": {
                    "host": "https://us-central1-aiplatform.googleapis.com",
                    "password": '{"type": "service_account", ...}',
                },
            },
            "conn-fields": {
                "project": _text_field("Project", "Google Cloud project id; empty: the key's or ADC's"),
                "region": _text_field("Region", "the jobs' location, e.g. us-central1; empty: us-central1"),
                "staging_uri": _text_field("Staging URI", "gs://bucket/prefix where batch inputs are staged"),
                "output_uri": _text_field(
                    "Output URI", "gs://bucket/prefix for predictions; empty: the staging URI"
                ),
            },
        },
    ],
    "hooks": [
        {
            "integration-name": "LLM Batch APIs",
            "python-modules": ["batch_provider.hooks.batch"],
        }
    ],
    "triggers": [
        {
            "integration-name": "LLM Batch APIs",
            "python-modules": ["batch_provider.triggers.batch"],
        }
    ],
    "operators": [
        {
            "integration-name": "LLM Batch APIs",
            "python-modules": [
                "batch_provider.operators.batch",
                "batch_provider.operators.submit",
                "batch_provider.operators.collect",
                "batch_provider.operators.retry",
            ],
        }
    ],
    "sensors": [
        {
            "integration-name": "LLM Batch APIs",
            "python-modules": ["batch_provider.sensors.batch"],
        }
    ],
    "extra-links": [
        "batch_provider.links.batch.BatchLink",
    ],
    "task-decorators": [
        {"name": "batch_llm", "class-name": "batch_provider.decorators.batch_llm.batch_llm_task"},
    ],
}
