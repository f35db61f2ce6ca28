"""Bedrock backend pieces without a server: translation, tokens, states, result lines; and the
``aws_conn_id`` path against the emulator."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from bedrock_support import CLAUDE, INPUT_BUCKET, OUTPUT_BUCKET, ROLE

from batch_provider.backends.bedrock.backend import (
    BedrockBackend,
    client_request_token,
    job_name,
)
from batch_provider.backends.bedrock.models import ModelFamily, base_model_id, family_of
from batch_provider.backends.registry import create_backend
from batch_provider.core.errors import RequestRejected
from batch_provider.core.ledger import RunKey, chunk_tags
from batch_provider.core.models import BatchEnding, BatchStatus, ImagePart, ItemStatus, LLMRequest, Message
from batch_provider.core.submission import submit_run

TOKEN_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
JOB_NAME_PATTERN = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")


def offline(**options: Any) -> BedrockBackend:
    return BedrockBackend(
        role_arn=ROLE,
        s3_uri=f"s3://{INPUT_BUCKET}/unit",
        region_name="us-east-1",
        bedrock_endpoint_url="http://127.0.0.1:9",
        s3_endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        **options,
    )


def decoded(backend: BedrockBackend, request: LLMRequest) -> dict[str, Any]:
    encoded = backend.encode(request)
    line = json.loads(encoded.line)
    assert list(line) == ["recordId", "modelInput"]
    assert backend.custom_id_of(encoded.line) == request.custom_id
    assert encoded.group == request.model
    return line["modelInput"]


def test_registry_builds_the_backend() -> None:
    backend = create_backend("bedrock", role_arn=ROLE, s3_uri="s3://bkt/base")
    assert isinstance(backend, BedrockBackend) and backend.keeps_tags
    assert (backend.input_bucket, backend.input_prefix, backend.output_prefix) == (
        "bkt",
        "base/input",
        "base/output",
    )
    with pytest.raises(ValueError, match=r"24\.\.168"):
        offline(timeout_hours=12)
    with pytest.raises(ValueError, match="role_arn"):
        BedrockBackend(role_arn="", s3_uri="s3://bkt/x")


def test_anthropic_body() -> None:
    request = LLMRequest(
        custom_id="doc-1",
        model=CLAUDE,
        system="Be brief.",
        messages=[
            Message(
                role="user",
                content=[{"type": "text", "text": "Look"}, ImagePart(data="AAA", media_type="image/png")],
            )
        ],
        max_tokens=100,
        temperature=0.2,
        stop=["END"],
    )
    body = decoded(offline(), request)
    assert body == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                ],
            }
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }
    with pytest.raises(RequestRejected, match="max_tokens"):
        offline().encode(LLMRequest(custom_id="x", model=CLAUDE, input="hi"))


def test_nova_converse_and_native_bodies() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    nova = LLMRequest(
        custom_id="n1",
        model="us.amazon.nova-lite-v1:0",
        system="S",
        input="hi",
        max_tokens=5,
        response_schema=schema,
    )
    body = decoded(offline(), nova)
    assert body["schemaVersion"] == "messages-v1" and body["system"] == [{"text": "S"}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 5}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": schema}
    assert offline().wants_json(offline().encode(nova).line)

    converse = decoded(
        offline(invocation_type="Converse"), LLMRequest(custom_id="c1", model="meta.llama3-70b", input="hi")
    )
    assert "schemaVersion" not in converse and converse["messages"][0]["content"] == [{"text": "hi"}]

    native = decoded(
        offline(),
        LLMRequest(
            custom_id="l1", model="meta.llama3-70b-instruct-v1:0", native={"prompt": "hi", "max_gen_len": 9}
        ),
    )
    assert native == {"prompt": "hi", "max_gen_len": 9}
    with pytest.raises(RequestRejected, match="no request translation"):
        offline().encode(LLMRequest(custom_id="l2", model="cohere.command-r-v1:0", input="hi"))


def test_llama_prompt_template() -> None:
    llama = "us.meta.llama3-3-70b-instruct-v1:0"
    body = decoded(offline(), LLMRequest(custom_id="l1", model=llama, system="S", input="hi", max_tokens=7))
    assert body == {
        "prompt": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "max_gen_len": 7,
    }
    with pytest.raises(RequestRejected, match="Converse"):
        offline().encode(
            LLMRequest(custom_id="l2", model=llama, input="hi", response_schema={"type": "object"})
        )


def test_model_families_and_record_ids() -> None:
    assert family_of("global.anthropic.claude-sonnet-5-5-v1:0") is ModelFamily.ANTHROPIC
    assert base_model_id("arn:aws:bedrock:us-east-1:1:inference-profile/eu.amazon.nova-pro-v1:0") == (
        "amazon.nova-pro-v1:0"
    )
    backend = offline()
    assert backend.encode(LLMRequest(custom_id="ok_id-1", model=CLAUDE, input="x", max_tokens=1))
    for bad in ("has space", "x" * 65, "dot.id"):
        with pytest.raises(RequestRejected, match="custom_id"):
            backend.encode(LLMRequest(custom_id=bad, model=CLAUDE, input="x", max_tokens=1))


def test_token_and_job_name_are_valid_and_deterministic() -> None:
    key = RunKey(dag_id="nightly", task_id="submit", run_id="scheduled__2026-11-21T00:00:00+00:00")
    tags = chunk_tags(key, 3, 12, "f" * 64)
    token = client_request_token({**tags, "team": "x"})
    assert token == client_request_token(tags), "only bp_run and bp_chunk matter"
    assert TOKEN_PATTERN.fullmatch(token) and len(token) <= 256
    assert token != client_request_token(chunk_tags(key, 4, 12, "f" * 64))
    name = job_name(token)
    assert JOB_NAME_PATTERN.fullmatch(name) and len(name) <= 63
    loose = client_request_token({"dag": "a b/c"})
    assert TOKEN_PATTERN.fullmatch(loose) and JOB_NAME_PATTERN.fullmatch(job_name("x" * 100))


@pytest.mark.parametrize(
    ("native", "status", "ending"),
    [
        ("Submitted", BatchStatus.PENDING, None),
        ("Validating", BatchStatus.PENDING, None),
        ("Scheduled", BatchStatus.PENDING, None),
        ("InProgress", BatchStatus.RUNNING, None),
        ("Stopping", BatchStatus.FINALIZING, None),
        ("Completed", BatchStatus.ENDED, BatchEnding.COMPLETED),
        ("PartiallyCompleted", BatchStatus.ENDED, BatchEnding.EXPIRED),
        ("Expired", BatchStatus.ENDED, BatchEnding.EXPIRED),
        ("Stopped", BatchStatus.ENDED, BatchEnding.CANCELLED),
        ("Failed", BatchStatus.ENDED, BatchEnding.FAILED),
    ],
)
def test_all_ten_statuses(native: str, status: BatchStatus, ending: BatchEnding | None) -> None:
    job = {
        "jobArn": "arn:aws:bedrock:us-east-1:1:model-invocation-job/abcdabcdabcd",
        "status": native,
        "submitTime": "2026-11-21T18:00:00Z",
        "totalRecordCount": 10,
        "successRecordCount": 6,
        "errorRecordCount": 1,
    }
    state = offline().state_of(job)
    assert (state.status, state.ending, state.native_status) == (status, ending, native)
    assert state.counts.succeeded == 6 and state.counts.errored == 1
    if ending is BatchEnding.EXPIRED:
        assert state.counts.expired == 3
    if ending is BatchEnding.CANCELLED:
        assert state.counts.cancelled == 3


def test_result_lines() -> None:
    backend = offline()
    ok = backend.record_of(
        {
            "recordId": "a",
            "modelInput": {},
            "modelOutput": {
                "content": [{"type": "text", "text": "hello"}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": 1},
            },
        },
        "job",
        CLAUDE,
    )
    assert ok.status is ItemStatus.SUCCEEDED and ok.output_text == "hello" and ok.finish_reason == "end_turn"
    assert (ok.usage.input_tokens, ok.usage.output_tokens, ok.usage.cache_read_tokens) == (7, 2, 1)
    nova = backend.record_of(
        {
            "recordId": "b",
            "modelOutput": {
                "output": {
                    "message": {"content": [{"toolUse": {"name": "bp_structured_output", "input": {"a": 1}}}]}
                },
                "stopReason": "tool_use",
                "usage": {"inputTokens": 3, "outputTokens": 4},
            },
        },
        "job",
    )
    assert (
        nova.parsed == {"a": 1} and json.loads(nova.output_text) == {"a": 1} and nova.usage.output_tokens == 4
    )
    for code, retryable in ((500, True), (429, True), (400, False), ("503", True)):
        record = backend.record_of(
            {"recordId": "c", "error": {"errorCode": code, "errorMessage": "m"}}, "job"
        )
        assert record.status is ItemStatus.ERRORED and record.retryable is retryable


async def test_aws_connection_builds_the_clients(emu: Any, tmp_path: Any, monkeypatch: Any) -> None:
    """An Airflow ``aws`` connection (``service_config`` endpoints) instead of explicit keys."""
    extra = {
        "region_name": "us-east-1",
        "service_config": {
            "bedrock": {"endpoint_url": emu.base_url},
            "s3": {"endpoint_url": emu.s3_endpoint},
        },
        "config_kwargs": {"s3": {"addressing_style": "path"}},
    }
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_BEDROCK_EMU", json.dumps(conn))
    emu.bedrock_settings(min_records=10)
    backend = create_backend(
        "bedrock",
        role_arn=ROLE,
        s3_input_uri=f"s3://{INPUT_BUCKET}/conn",
        s3_output_uri=f"s3://{OUTPUT_BUCKET}/conn",
        aws_conn_id="bedrock_emu",
        min_records_per_job=10,
    )
    from batch_provider.core.records import iter_list
    from batch_provider.core.render import RequestBuilder
    from batch_provider.core.rundir import run_directory

    rows = [{"id": f"r{i}", "text": "hello"} for i in range(10)]
    async with backend:
        handle = await submit_run(
            backend,
            RequestBuilder(template="{{ text }}", model=CLAUDE, max_tokens=8).render(iter_list(rows)),
            run_directory(tmp_path, dag_id="d", run_id="conn"),
            run_key=RunKey(dag_id="d", task_id="s", run_id="conn"),
            conn_id="bedrock_emu",
        )
        emu.advance(2 * 86400)
        state = await backend.status(handle.batch_ids[0])
        assert state.native_status == "Completed"
        assert len([r async for r in backend.results(handle.batches[0])]) == 10


def test_job_tags_are_made_valid() -> None:
    from batch_provider.backends.bedrock.backend import job_tags

    tags = job_tags({"team": "a,b", "dag": "x*y", "aws:reserved": "v", "k" * 200: "v" * 300})
    assert tags[0] == {"key": "team", "value": "a b"} and tags[1] == {"key": "dag", "value": "x_y"}
    assert len(tags) == 3 and len(tags[2]["key"]) == 128 and len(tags[2]["value"]) == 256


def test_options_from_an_aws_connection() -> None:
    from batch_provider.backends.bedrock.connection import bedrock_options

    extra = {
        "role_arn": "arn:aws:iam::1:role/airflow",
        "bedrock_role_arn": ROLE,
        "bedrock_s3_uri": "s3://bkt/x",
    }
    options = bedrock_options(
        "aws_default", {**extra, "bedrock_timeout_hours": "48"}, invocation_type="Converse"
    )
    assert options == {
        "aws_conn_id": "aws_default",
        "role_arn": ROLE,
        "s3_uri": "s3://bkt/x",
        "timeout_hours": 48,
        "invocation_type": "Converse",
    }
    assert isinstance(create_backend("bedrock", **options), BedrockBackend)
    with pytest.raises(ValueError, match="bedrock_role_arn"):
        bedrock_options("aws_default", {"role_arn": ROLE, "bedrock_s3_uri": "s3://bkt/x"})
    with pytest.raises(ValueError, match="bedrock_s3_uri"):
        bedrock_options("aws_default", {"bedrock_role_arn": ROLE})
