"""The emulator's synchronous endpoints driven by the official SDKs: the same answers and usage
as a batch gets for the same body, per-key rate limits (requests and tokens per window, 429 with
Retry-After), server-wide faults, and the ``/_emu/sync`` control route."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from batch_provider.emulator import outputs
from batch_provider.emulator.gemini.outputs import generate
from batch_provider.emulator.openai import answers

SEED = 7  # the module emulator's seed (conftest)


@pytest.fixture(autouse=True)
def _reset_limits(emu: Any) -> Any:
    emu.sync_settings(rpm=0, tpm=0, window_seconds=60, latency_seconds=0)
    yield
    emu.sync_settings(rpm=0, tpm=0, window_seconds=60, latency_seconds=0)


def test_openai_chat_responses_and_embeddings_answer_as_a_batch_would(oai: openai.OpenAI) -> None:
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Sort these tickets"}],
        "max_tokens": 24,
    }
    got = oai.chat.completions.create(**chat)
    want, in_tok, out_tok = answers.openai_response("/v1/chat/completions", chat, SEED, 0, 1536)
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (in_tok, out_tok)
    assert got.id == want["id"]

    body = {"model": "gpt-4o-mini", "input": "Name a colour", "max_output_tokens": 20}
    response = oai.responses.create(**body)
    want, in_tok, out_tok = answers.openai_response("/v1/responses", body, SEED, 0, 1536)
    assert response.output_text and response.id == want["id"]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (in_tok, out_tok)

    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-unknown-9", messages=[{"role": "user", "content": "x"}])
    vectors = oai.embeddings.create(model="text-embedding-3-small", input=["one", "two"], dimensions=8)
    assert [len(d.embedding) for d in vectors.data] == [8, 8]
    assert (
        vectors.usage.prompt_tokens
        == answers.openai_usage(
            "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": ["one", "two"], "dimensions": 8},
            SEED,
        )[0]
    )


def test_anthropic_messages_answer_as_a_batch_would(anth: anthropic.Anthropic) -> None:
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 30,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    got = anth.messages.create(**params)
    want = outputs.anthropic_message(params, SEED)
    assert got.id == want["id"] and got.content[0].text == want["content"][0]["text"]
    assert got.usage.output_tokens == want["usage"]["output_tokens"]
    assert got.usage.service_tier == "standard"  # not "batch": the full price applies
    with pytest.raises(anthropic.NotFoundError):
        anth.messages.create(
            model="claude-unknown-9", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        anth.messages.create(
            model="claude-haiku-4-5", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )


def test_gemini_generate_content_answers_as_a_batch_would(emu: Any) -> None:
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    client = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta")
    )
    got = client.models.generate_content(model="gemini-2.5-flash", contents="Summarise the weather")
    request = {"contents": [{"role": "user", "parts": [{"text": "Summarise the weather"}]}]}
    want = generate(request, "models/gemini-2.5-flash", SEED)
    assert got.text == want["candidates"][0]["content"]["parts"][0]["text"]
    assert got.usage_metadata.total_token_count == want["usageMetadata"]["totalTokenCount"]


def test_requests_per_window_are_limited_per_key_with_retry_after(emu: Any) -> None:
    before = emu.sync_settings(rpm=2, window_seconds=30)
    first = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="key-one", max_retries=0)
    second = openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key="key-two", max_retries=0)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    first.chat.completions.create(**body)
    first.chat.completions.create(**body)
    with pytest.raises(openai.RateLimitError) as caught:
        first.chat.completions.create(**body)
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 30
    second.chat.completions.create(**body)  # another key has its own window
    counts = emu.sync_settings()
    assert counts["limited"] - before["limited"] == 1 and counts["served"] - before["served"] == 3


def test_tokens_per_window_are_limited(emu: Any) -> None:
    anth = anthropic.Anthropic(base_url=emu.base_url, api_key="key-tokens", max_retries=0)
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    tokens = outputs.anthropic_message(params, SEED)["usage"]
    emu.sync_settings(tpm=tokens["input_tokens"] + tokens["output_tokens"] + 1, window_seconds=30)
    anth.messages.create(**params)
    with pytest.raises(anthropic.RateLimitError) as caught:
        anth.messages.create(**params)
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_server_faults_and_bad_settings(emu: Any, oai: openai.OpenAI) -> None:
    emu.set_faults({"fault_rate": 1.0, "fault_kinds": ["500"]})
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], max_tokens=5
        )
    emu.clear_faults()
    answer = httpx.post(f"{emu.base_url}/_emu/sync", json={"rpm": -1})
    assert answer.status_code == 400 and emu.sync_settings()["rpm"] == 0
    assert emu.sync_settings(latency_seconds=0.01)["latency_seconds"] == 0.01


def test_vertex_generate_content_answers_as_a_batch_would_and_is_limited_per_token(emu: Any) -> None:
    genai = pytest.importorskip("google.genai")
    from google.genai import errors, types
    from google.oauth2.credentials import Credentials

    def client(token: str) -> Any:
        return genai.Client(
            vertexai=True,
            project="p",
            location="us-central1",
            credentials=Credentials(token=token),
            http_options=types.HttpOptions(
                base_url=emu.base_url, api_version="v1", retry_options=types.HttpRetryOptions(attempts=1)
            ),
        )

    one, two, three = (
        client("tok-one"),
        client("tok-two"),
        client("tok-three"),
    )  # kept: a dropped client closes
    got = one.models.generate_content(model="gemini-2.5-flash", contents="Summarise the sky")
    request = {"contents": [{"role": "user", "parts": [{"text": "Summarise the sky"}]}]}
    want = generate(request, "gemini-2.5-flash", SEED)  # the model id as the Vertex batch face passes it
    assert got.text == want["candidates"][0]["content"]["parts"][0]["text"]
    assert got.usage_metadata.total_token_count == want["usageMetadata"]["totalTokenCount"]

    before = emu.sync_settings(rpm=1, window_seconds=30)
    two.models.generate_content(model="gemini-2.5-flash", contents="one")
    with pytest.raises(errors.ClientError) as caught:
        two.models.generate_content(model="gemini-2.5-flash", contents="two")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    three.models.generate_content(model="gemini-2.5-flash", contents="three")  # its own window
    counts = emu.sync_settings()
    assert counts["limited"] - before["limited"] == 1 and counts["served"] - before["served"] == 2


def test_the_invalid_output_directive_spoils_sync_json_answers_as_in_batches(emu: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    url = f"{emu.base_url}/v1/chat/completions"
    headers = {"authorization": "Bearer k-invalid"}

    def body(text: str) -> dict[str, Any]:
        return {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 200,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        }

    def content(text: str) -> str:
        answer = httpx.post(url, json=body(text), headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["message"]["content"]

    def valid(text: str) -> bool:
        try:
            value = json.loads(text)
        except ValueError:
            return False
        if not isinstance(value, dict) or set(value) != {"label", "score"}:
            return False
        return isinstance(value["label"], str) and type(value["score"]) is int

    assert all(valid(content(f"clean {i}")) for i in range(5))
    spoiled = [valid(content(f"row {i} [[emu:invalid100]]")) for i in range(5)]
    assert not any(spoiled)
    # the same body sent again draws again: at 50 % some answers of one body are valid, some not
    draws = {valid(content("the same row [[emu:invalid50]]")) for _ in range(12)}
    assert draws == {True, False}
