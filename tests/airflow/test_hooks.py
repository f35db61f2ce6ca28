"""Hooks: connection → backend, key handling, provider metadata."""

from __future__ import annotations

import json

import pytest
from airflow_setup import API_KEY, conn_json

from batch_provider import get_provider_info
from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.openai.backend import OpenAIBackend, OpenAICompatibleBackend
from batch_provider.hooks.batch import (
    AnthropicBatchHook,
    GeminiBatchHook,
    LLMBatchHook,
    MissingApiKeyError,
    OpenAIBatchHook,
    OpenAICompatibleBatchHook,
    base_url_of,
)


@pytest.fixture
def conns(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LLM_OPENAI_DEFAULT", conn_json("llm_openai", "http://127.0.0.1:9/v1"))
    monkeypatch.setenv("AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT", conn_json("llm_anthropic", ""))
    monkeypatch.setenv("AIRFLOW_CONN_MY_VLLM", conn_json("llm_openai_compatible", "http://127.0.0.1:8000/v1"))
    monkeypatch.setenv("AIRFLOW_CONN_NO_KEY", conn_json("llm_openai", "", password=""))
    monkeypatch.setenv("AIRFLOW_CONN_NO_URL", conn_json("llm_openai_compatible", "", password="k"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_GENERIC",
        json.dumps({"conn_type": "generic", "password": "k", "extra": {"provider": "anthropic"}}),
    )


async def test_backend_from_connection(conns):
    openai = LLMBatchHook(provider="openai").get_backend()
    assert isinstance(openai, OpenAIBackend)
    await openai.aclose()
    anthropic = await LLMBatchHook(conn_id="llm_anthropic_default").aget_backend()
    assert isinstance(anthropic, AnthropicBackend)
    await anthropic.aclose()
    compatible = LLMBatchHook(conn_id="my_vllm").get_backend()
    assert isinstance(compatible, OpenAICompatibleBackend)
    await compatible.aclose()
    assert LLMBatchHook(conn_id="generic").get_provider().value == "anthropic"


def test_options_carry_key_and_base_url_only_to_the_backend(conns):
    hook = OpenAIBatchHook()
    provider, options = hook._options(hook.get_connection(hook.conn_id))
    assert provider.value == "openai"
    assert options == {"api_key": API_KEY, "base_url": "http://127.0.0.1:9/v1"}
    assert API_KEY not in repr(vars(hook))


def test_empty_key_is_a_clear_error_naming_the_connection(conns):
    with pytest.raises(MissingApiKeyError, match="'no_key' has no API key"):
        LLMBatchHook(conn_id="no_key").get_backend()
    ok, message = LLMBatchHook(conn_id="no_key").test_connection()
    assert not ok and "no_key" in message


def test_compatible_needs_a_base_url(conns):
    with pytest.raises(ValueError, match="no base URL"):
        LLMBatchHook(conn_id="no_url").get_backend()


def test_default_conn_ids():
    assert OpenAIBatchHook().conn_id == "llm_openai_default"
    assert AnthropicBatchHook().conn_id == "llm_anthropic_default"
    assert OpenAICompatibleBatchHook().conn_id == "llm_openai_compatible_default"
    assert LLMBatchHook(provider="anthropic").conn_id == "llm_anthropic_default"


def test_base_url_from_uri_style_connection():
    from airflow.sdk import Connection

    conn = Connection.from_uri("llm-openai://:key@127.0.0.1:8787/v1", conn_id="x")
    assert base_url_of(conn) == "http://127.0.0.1:8787/v1"


def test_provider_info_matches_hooks():
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-llm-batch"
    classes = {"llm_openai": OpenAIBatchHook, "llm_openai_compatible": OpenAICompatibleBatchHook}
    classes["llm_anthropic"] = AnthropicBatchHook
    classes["llm_gemini"] = GeminiBatchHook
    for entry in info["connection-types"]:
        hook = classes[entry["connection-type"]]
        assert entry["hook-class-name"] == f"{hook.__module__}.{hook.__qualname__}"
        assert hook.conn_type == entry["connection-type"]
        assert entry["ui-field-behaviour"]["relabeling"]["password"] == "API Key"


def test_providers_manager_lists_the_connection_types():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()  # the new task-sdk runtime manager has no form metadata
    assert "airflow-provider-llm-batch" in manager.providers
    with pytest.warns(FutureWarning):
        hooks = manager.hooks
    for conn_type in ("llm_openai", "llm_openai_compatible", "llm_anthropic", "llm_gemini"):
        assert hooks[conn_type] is not None, conn_type
    assert manager.field_behaviours["llm_anthropic"]["relabeling"]["password"] == "API Key"
    assert "extra__llm_openai__organization" in manager.connection_form_widgets
    gemini = manager.field_behaviours["llm_gemini"]
    assert gemini["relabeling"] == {"password": "API Key", "host": "Base URL (optional)"}
    assert gemini["placeholders"]["password"] == "AIza..."
    assert {"extra__llm_gemini__api_version", "extra__llm_gemini__inline_max_bytes"} <= set(
        manager.connection_form_widgets
    )


def test_cli_lists_hooks_triggers_and_links():
    import os
    import subprocess
    import sys

    from airflow_setup import AIRFLOW_ENV

    env = {**os.environ, **AIRFLOW_ENV}
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "hooks", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {row["connection_type"]: row for row in json.loads(out[out.index("[") :])}
    assert listed["llm_openai"]["class"] == "batch_provider.hooks.batch.OpenAIBatchHook"
    assert listed["llm_anthropic"]["class"] == "batch_provider.hooks.batch.AnthropicBatchHook"
    assert listed["llm_gemini"]["class"] == "batch_provider.hooks.batch.GeminiBatchHook"
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "triggers", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "batch_provider.triggers.batch" in out


ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"


@pytest.fixture
def provider_conns(monkeypatch):
    gemini = {
        "conn_type": "llm_gemini",
        "host": "http://127.0.0.1:9",
        "password": "AIza-test",
        "extra": {"api_version": "v1alpha", "inline_max_bytes": "1234"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_LLM_GEMINI_DEFAULT", json.dumps(gemini))
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {
            "region_name": "eu-west-1",
            "bedrock_role_arn": ROLE,
            "bedrock_s3_uri": "s3://bkt/jobs",
            "bedrock_min_records_per_job": "5",
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_BEDROCK", json.dumps(aws))
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_NO_ROLE", json.dumps({"conn_type": "aws", "extra": {"bedrock_s3_uri": "s3://b/x"}})
    )


async def test_gemini_connection_builds_the_gemini_backend(provider_conns):
    from batch_provider.backends.gemini.backend import GeminiBackend

    hook = GeminiBatchHook()
    assert hook.conn_id == "llm_gemini_default" and hook.get_provider().value == "gemini"
    _, options = hook._options(hook.get_connection(hook.conn_id))
    assert options == {
        "api_key": "AIza-test",
        "base_url": "http://127.0.0.1:9",
        "api_version": "v1alpha",
        "inline_max_bytes": "1234",
    }
    backend = await LLMBatchHook(conn_id="llm_gemini_default").aget_backend()
    assert isinstance(backend, GeminiBackend) and backend.inline_max_bytes == 1234
    assert backend.api_version == "v1alpha"
    await backend.aclose()


async def test_aws_connection_builds_the_bedrock_backend(provider_conns):
    from batch_provider.backends.bedrock.backend import BedrockBackend

    hook = LLMBatchHook(conn_id="aws_bedrock")
    assert hook.get_provider().value == "bedrock"  # from the conn type: no provider= needed
    assert hook.get_base_url() is None
    sync = hook.get_backend()
    assert isinstance(sync, BedrockBackend) and sync.min_records_per_job == 5
    assert (sync.input_bucket, sync.input_prefix) == ("bkt", "jobs/input")
    await sync.aclose()
    backend = await LLMBatchHook(conn_id="aws_bedrock", provider="bedrock").aget_backend()
    assert isinstance(backend, BedrockBackend) and backend.role_arn == ROLE
    await backend.aclose()
    assert LLMBatchHook(provider="bedrock").conn_id == "aws_default"
    ok, message = LLMBatchHook(conn_id="aws_no_role").test_connection()
    assert not ok and "bedrock_role_arn" in message


def test_unknown_provider_names_the_known_ones():
    with pytest.raises(ValueError) as caught:
        LLMBatchHook(conn_id="x", provider="nope-ai")
    message = str(caught.value)
    assert "nope-ai" in message and "is not a valid Provider" not in message
    for known in ("openai", "anthropic", "gemini", "bedrock"):
        assert known in message
