"""Translation of LLMRequest into native lines: exact bytes, rejections, determinism."""

from __future__ import annotations

import json

import pytest

from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.openai.backend import OpenAIBackend, OpenAICompatibleBackend
from batch_provider.core.errors import RequestRejected
from batch_provider.core.limits import ANTHROPIC_LIMITS
from batch_provider.core.models import LLMRequest

SCHEMA = {"title": "Verdict", "type": "object", "properties": {"label": {"type": "string"}}}


@pytest.fixture
def openai() -> OpenAIBackend:
    return OpenAIBackend(api_key="sk-test-secret-000")


@pytest.fixture
def anthropic() -> AnthropicBackend:
    return AnthropicBackend(api_key="sk-ant-test-secret-000")


def chat(**fields) -> LLMRequest:
    base = {"custom_id": "r-1", "model": "gpt-6-luna", "messages": [{"role": "user", "content": "Hi"}]}
    return LLMRequest(**{**base, **fields})


def test_openai_chat_line_is_exact(openai: OpenAIBackend) -> None:
    request = chat(
        system="Be terse.",
        max_tokens=16,
        temperature=0.2,
        stop=["\n"],
        response_schema=SCHEMA,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "media_type": "image/png", "data": "AAAA"},
                    {"type": "image", "url": "https://x.test/a.png"},
                ],
            }
        ],
    )
    encoded = openai.encode(request)
    assert encoded.line == (
        b'{"custom_id":"r-1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-6-luna",'
        b'"messages":[{"role":"system","content":"Be terse."},{"role":"user","content":[{"type":"text",'
        b'"text":"What is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},'
        b'{"type":"image_url","image_url":{"url":"https://x.test/a.png"}}]}],"max_completion_tokens":16,'
        b'"temperature":0.2,"stop":["\\n"],"response_format":{"type":"json_schema","json_schema":'
        b'{"name":"Verdict","schema":{"title":"Verdict","type":"object","properties":{"label":'
        b'{"type":"string"}}}}}}}'
    )
    assert encoded.group == "/v1/chat/completions gpt-6-luna"
    assert (encoded.model, encoded.endpoint) == ("gpt-6-luna", "/v1/chat/completions")
    assert openai.custom_id_of(encoded.line) == "r-1"
    assert openai.wants_json(encoded.line)
    assert openai.encode(request).line == encoded.line


def test_openai_responses_and_embeddings(openai: OpenAIBackend) -> None:
    responses = openai.encode(
        chat(endpoint="/v1/responses", system="Sys", max_tokens=8, response_schema=SCHEMA)
    )
    body = json.loads(responses.line)["body"]
    assert list(body) == ["model", "input", "instructions", "max_output_tokens", "text"]
    assert body["input"] == [{"role": "user", "content": "Hi"}]
    assert body["text"]["format"]["type"] == "json_schema"
    assert openai.wants_json(responses.line)

    embed = openai.encode(
        LLMRequest(custom_id="e-1", model="text-embedding-3-small", kind="embedding", input=["a", "b"])
    )
    assert json.loads(embed.line) == {
        "custom_id": "e-1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": ["a", "b"]},
    }
    assert not openai.wants_json(embed.line)


def test_openai_native_body_fills_model_and_max_tokens_then_extra(openai: OpenAIBackend) -> None:
    request = chat(
        native={"messages": [{"role": "user", "content": "x"}], "seed": 1}, max_tokens=5, extra={"seed": 2}
    )
    body = json.loads(openai.encode(request).line)["body"]
    assert body == {
        "messages": [{"role": "user", "content": "x"}],
        "seed": 2,
        "model": "gpt-6-luna",
        "max_completion_tokens": 5,
    }


def test_anthropic_params_line_is_exact(anthropic: AnthropicBackend) -> None:
    request = LLMRequest(
        custom_id="r_1",
        model="claude-haiku-4-5",
        system="Be terse.",
        max_tokens=32,
        temperature=0,
        stop=["END"],
        response_schema={"type": "object"},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "media_type": "image/jpeg", "data": "QUJD"},
                    {"type": "image", "url": "https://x.test/b.jpg"},
                ],
            }
        ],
    )
    encoded = anthropic.encode(request)
    assert encoded.line == (
        b'{"custom_id":"r_1","params":{"model":"claude-haiku-4-5","max_tokens":32,"system":"Be terse.",'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"Look"},{"type":"image","source":'
        b'{"type":"base64","media_type":"image/jpeg","data":"QUJD"}},{"type":"image","source":{"type":"url",'
        b'"url":"https://x.test/b.jpg"}}]}],"temperature":0.0,"stop_sequences":["END"],'
        b'"output_format":{"type":"json_schema","schema":{"type":"object"}}}}'
    )
    assert encoded.group == ""
    assert anthropic.custom_id_of(encoded.line) == "r_1"
    assert anthropic.wants_json(encoded.line)


def test_anthropic_native_params(anthropic: AnthropicBackend) -> None:
    request = LLMRequest(
        custom_id="n1",
        model="claude-haiku-4-5",
        max_tokens=10,
        native={"messages": [{"role": "user", "content": "x"}], "max_tokens": 99},
        extra={"metadata": {"user_id": "u"}},
    )
    params = json.loads(anthropic.encode(request).line)["params"]
    assert params == {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 99,
        "model": "claude-haiku-4-5",
        "metadata": {"user_id": "u"},
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"custom_id": "a\nb"}, "custom_id"),
        ({"custom_id": ""}, "custom_id"),
        ({"custom_id": "x" * 513}, "custom_id"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"endpoint": "/v1/responses", "stop": ["x"]}, "stop"),
        ({"kind": "embedding", "messages": []}, "input"),
    ],
)
def test_openai_rejections(openai: OpenAIBackend, fields: dict, field: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        openai.encode(chat(**fields))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"custom_id": "has space"}, "custom_id"),
        ({"custom_id": "x" * 65}, "custom_id"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"kind": "embedding", "input": "x"}, "kind"),
    ],
)
def test_anthropic_rejections(anthropic: AnthropicBackend, fields: dict, field: str) -> None:
    base = {"custom_id": "a-1", "model": "claude-haiku-4-5", "max_tokens": 5}
    base["messages"] = [{"role": "user", "content": "hi"}]
    with pytest.raises(RequestRejected) as caught:
        anthropic.encode(LLMRequest(**{**base, **fields}))
    assert caught.value.field == field


def test_request_over_byte_limit_is_rejected() -> None:
    from dataclasses import replace

    backend = AnthropicBackend(api_key="k", limits=replace(ANTHROPIC_LIMITS, max_bytes_per_request=200))
    request = LLMRequest(
        custom_id="big", model="m", max_tokens=1, messages=[{"role": "user", "content": "x" * 300}]
    )
    with pytest.raises(RequestRejected) as caught:
        backend.encode(request)
    assert caught.value.field == "body"


def test_key_never_in_repr() -> None:
    for backend in (
        OpenAIBackend(api_key="sk-test-secret-000"),
        OpenAICompatibleBackend(api_key="sk-test-secret-000", base_url="http://127.0.0.1:1/v1"),
        AnthropicBackend(api_key="sk-test-secret-000"),
    ):
        assert "secret" not in repr(backend)
        assert "secret" not in repr(vars(backend))


def test_compatible_backend_needs_base_url() -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleBackend(api_key="k")


def test_custom_id_of_escaped_ids(openai: OpenAIBackend) -> None:
    encoded = openai.encode(chat(custom_id='quote"and\\slash é'))
    assert openai.custom_id_of(encoded.line) == 'quote"and\\slash é'


def test_openai_rejects_an_endpoint_the_batch_api_does_not_serve() -> None:
    backend = OpenAIBackend(api_key="k")
    bad = LLMRequest(custom_id="e1", endpoint="/v1/chat/completion", native={"model": "m", "messages": [{}]})
    with pytest.raises(RequestRejected) as info:
        backend.encode(bad)
    assert info.value.field == "endpoint" and "/v1/chat/completions" in info.value.reason
    moderation = LLMRequest(custom_id="e2", endpoint="/v1/moderations", native={"model": "m", "input": "x"})
    assert backend.encode(moderation).endpoint == "/v1/moderations"


def test_system_blocks_and_cache_flag_in_each_wire_form(
    openai: OpenAIBackend, anthropic: AnthropicBackend
) -> None:
    from batch_provider.backends.gemini.wire import generate_content_request

    blocks = [{"type": "text", "text": "Shared policy."}, {"type": "text", "text": "Row rules."}]
    plain = chat(model="claude-haiku-4-5", max_tokens=8, system="Shared policy.")
    assert json.loads(anthropic.encode(plain).line)["params"]["system"] == "Shared policy."
    cached = chat(model="claude-haiku-4-5", max_tokens=8, system=blocks, cache_system_prompt=True)
    assert json.loads(anthropic.encode(cached).line)["params"]["system"] == [
        {"type": "text", "text": "Shared policy."},
        {"type": "text", "text": "Row rules.", "cache_control": {"type": "ephemeral"}},
    ]
    flagged = chat(model="claude-haiku-4-5", max_tokens=8, system="Shared policy.", cache_system_prompt=True)
    assert json.loads(anthropic.encode(flagged).line)["params"]["system"] == [
        {"type": "text", "text": "Shared policy.", "cache_control": {"type": "ephemeral"}}
    ]
    responses = chat(system=blocks, endpoint="/v1/responses")
    assert json.loads(openai.encode(responses).line)["body"]["instructions"] == "Shared policy.\n\nRow rules."
    body, _ = generate_content_request(chat(model="gemini-2.5-flash", system=blocks))
    assert body["systemInstruction"] == {"parts": [{"text": "Shared policy."}, {"text": "Row rules."}]}


ENCODE_AS_CASES = [
    {},
    {"system": "Be terse.", "max_tokens": 16, "temperature": 0.2, "stop": ["\n"]},
    {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "cache_system_prompt": True},
    {"response_schema": SCHEMA, "max_tokens": 8},
    {"endpoint": "/v1/responses", "max_tokens": 8},
    {"kind": "embedding", "messages": [], "input": "vector me", "model": "text-embedding-3-small"},
    {"native": {"messages": [{"role": "user", "content": "n"}]}, "max_tokens": 4},
    {"extra": {"seed": 7}, "max_tokens": 4},
    {"model": None},
    {"messages": []},
    {"max_tokens": 0},
    {"max_tokens": None},
    {"endpoint": "/v1/moderations"},
    {"endpoint": "/v1/responses", "stop": ["x"]},
    {"kind": "embedding", "input": "x"},
    {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 4},
]


def _encoded_or_rejected(encode, request, *args) -> object:
    try:
        return encode(request, *args)
    except RequestRejected as exc:
        return ("rejected", exc.custom_id, exc.field, exc.reason, str(exc))


@pytest.mark.parametrize("row_id", ["r-1", "has space", "a\nb", "x" * 600])
@pytest.mark.parametrize("fields", ENCODE_AS_CASES)
def test_encode_as_equals_encoding_a_copy_with_the_wire_id(fields: dict, row_id: str) -> None:
    """What the splitter sends under a wire id is what encoding a copy carrying that id gave."""
    from dataclasses import replace

    from batch_provider.core.limits import OPENAI_LIMITS

    backends = [
        OpenAIBackend(api_key="k", limits=replace(OPENAI_LIMITS, max_bytes_per_request=300)),
        AnthropicBackend(api_key="k", limits=replace(ANTHROPIC_LIMITS, max_bytes_per_request=300)),
    ]
    base = {"custom_id": row_id, "model": "gpt-6-luna", "max_tokens": 5}
    base["messages"] = [{"role": "user", "content": "hi"}]
    request = LLMRequest(**{**base, **fields}).at_row(4)
    before = request.model_dump_json()
    for backend in backends:
        for wire in ("bp0123456789aba01n000000007", "has space", "y" * 600):
            copied = request.model_copy(update={"custom_id": wire})
            assert _encoded_or_rejected(backend.encode_as, request, wire) == _encoded_or_rejected(
                backend.encode, copied
            )
        assert _encoded_or_rejected(backend.encode_as, request, row_id) == _encoded_or_rejected(
            backend.encode, request
        )
    assert request.model_dump_json() == before and request.row == 4, "the request is left as it was"


def test_a_subclass_overriding_encode_alone_is_encoded_through_it(tmp_path) -> None:
    from batch_provider.core.split import RequestSplitter

    class Tagged(OpenAIBackend):
        def encode(self, request: LLMRequest):
            return super().encode(request.model_copy(update={"temperature": 0.5}))

    splitter = RequestSplitter(Tagged(api_key="k"), tmp_path, wire_token="0123456789ab")
    chunks = list(splitter.split([chat(custom_id="one", max_tokens=3)]))
    line = json.loads(chunks[0].path.read_bytes())
    assert line["custom_id"] == "bp0123456789aba01n000000000"
    assert line["body"]["temperature"] == 0.5
