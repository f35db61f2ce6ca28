"""Rows of one shape (prompt strings) give the same bytes as the general path, on every backend."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import msgspec
import pydantic_core
import pytest

from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.bedrock.backend import BedrockBackend
from batch_provider.backends.gemini.backend import GeminiBackend
from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.backends.vertex.backend import VertexBackend
from batch_provider.core.cache import ResultCache
from batch_provider.core.intake import input_fingerprint, intake
from batch_provider.core.jsonl import dumps_line
from batch_provider.core.models import ItemStatus, Message, RejectedRow, ResultRecord, Usage
from batch_provider.core.pricing import default_price_table
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import RunDirectory
from batch_provider.core.shaped import ShapedRequest, row_form

TEXTS = [
    "plain words",
    'a "quoted" word and a \\ backslash',
    "new\nline, tab\t, return\r",
    "controls \x00 \x01 \x1f \x7f",
    "é ü 中文 😀 \u2028 \u2029 \ufeff \U0010ffff",
    '"json_schema" in the text',
    "bp-shaped-id-a and bp-shaped-text-a",
    "  spaces around  ",
    "row-1",
    "x" * 3000,
    "",
    "last one",
]
"""Texts JSON escapes or that look like parts of a line; the long one is over the size limit the
test sets, and the empty one is not of a shape (it goes the general path)."""

SYSTEM = "Answer in five words."

BACKENDS = {
    "openai": lambda: OpenAIBackend(api_key="k"),
    "anthropic": lambda: AnthropicBackend(api_key="k"),
    "gemini": lambda: GeminiBackend(api_key="k", base_url="http://127.0.0.1:9"),
    "bedrock-claude": lambda: BedrockBackend(role_arn="arn:aws:iam::123456789012:role/r", s3_uri="s3://b/p"),
    "bedrock-llama": lambda: BedrockBackend(role_arn="arn:aws:iam::123456789012:role/r", s3_uri="s3://b/p"),
    "vertex": lambda: VertexBackend(
        project="p", staging_uri="gs://b/in", output_uri="gs://b/out", anonymous=True
    ),
}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-20241022",
    "gemini": "gemini-2.0-flash",
    "bedrock-claude": "anthropic.claude-3-5-haiku-20241022-v1:0",
    "bedrock-llama": "meta.llama3-1-8b-instruct-v1:0",
    "vertex": "gemini-2.0-flash",
}


def _rows() -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": text}], "system": SYSTEM} for text in TEXTS]
    rows.insert(3, {"messages": [{"role": "user", "content": "another system"}], "system": "Be terse."})
    rows.insert(5, {"messages": [{"role": "user", "content": "no system"}]})
    rows.insert(7, {"messages": [{"role": "user", "content": "an id of its own"}], "id": "own"})
    return rows


def _items(model: str, form: str = "requests") -> list:
    """Rows taken as requests, or rows of a table through a prompt template (with an id column)."""
    if form == "requests":
        builder = RequestBuilder(model=model, max_tokens=32)
        return list(builder.render(enumerate(_rows(), start=1)))
    builder = RequestBuilder(
        model=model, max_tokens=32, template="Ticket {{ n }}: {{ text }}", system=SYSTEM, id_field="key"
    )
    table = [{"key": f"t-{n}", "n": n, "text": text} for n, text in enumerate(TEXTS)]
    return list(builder.render(enumerate(table, start=1)))


def _general(items: list) -> list:
    return [item.request() if type(item) is ShapedRequest else item for item in items]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class _SmallWindows:
    """The packaged price table with an 80-token context window for every model."""

    def __init__(self) -> None:
        self._table = default_price_table()

    def context_window(self, provider: str, model: str | None) -> int | None:
        return 80

    def __getattr__(self, name: str):
        return getattr(self._table, name)


@pytest.mark.parametrize("form", ["requests", "template"])
@pytest.mark.parametrize("prices", ["packaged", "small windows"])
@pytest.mark.parametrize("cached", [False, True], ids=["no cache", "cache"])
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_shaped_rows_write_what_the_general_path_writes(
    tmp_path: Path, name: str, cached: bool, prices: str, form: str
) -> None:
    backend = BACKENDS[name]()
    backend.limits = replace(backend.limits, max_bytes_per_request=2500)
    items = _items(MODELS[name], form)
    shaped = [item for item in items if type(item) is ShapedRequest]
    assert len(shaped) == len(TEXTS) - 2, (
        "every row of the first system prompt after the first one, but the empty one"
    )
    if form == "template":
        assert shaped[0].custom_id == "t-1" and shaped[0].text.startswith("Ticket 1: ")
    table = _SmallWindows() if prices == "small windows" else default_price_table()
    runs = {}
    for label, given in (("shaped", items), ("general", _general(items))):
        run_dir = RunDirectory(tmp_path / label)
        attempt = intake(
            backend,
            given,
            run_dir,
            cache=ResultCache(tmp_path / f"cache-{label}") if cached else None,
            prices=table,
            max_requests_per_batch=5,
            max_bytes_per_batch=None,
            allow_unknown_models=True,
            wire_token="0123456789ab",
        )
        runs[label] = (attempt.model_dump(), _files(tmp_path / label))
    assert runs["shaped"] == runs["general"]
    attempt, files = runs["shaped"]
    rejects = files["rejects.jsonl"].decode()
    if prices == "small windows":
        assert "context window" in rejects and '"row":' in rejects
    else:
        assert '"field":"body"' in rejects, "the long text is over the size limit"
    if cached:
        assert len(files["attempt-1/cache_keys.jsonl"].splitlines()) >= len(shaped) - attempt["rejected"]
    assert input_fingerprint(items) == input_fingerprint(_general(items)) == attempt["input_fingerprint"]


@pytest.mark.parametrize("step", [2, 1], ids=["every other row answered", "every row answered"])
def test_a_warm_run_with_shaped_rows_writes_what_the_general_path_writes(tmp_path: Path, step: int) -> None:
    """Requests answered before: hits, misses, and the estimate of the misses alone."""
    backend = OpenAIBackend(api_key="k")
    items = _items(MODELS["openai"])
    cache = ResultCache(tmp_path / "cache")
    provider = backend.provider.value
    answered = [_general([item])[0] for item in items[::step] if type(item) is not RejectedRow]
    cache.put_many(
        (
            ResultCache.key(provider, request),
            ResultRecord(
                custom_id=request.custom_id,
                status=ItemStatus.SUCCEEDED,
                output_text="stored",
                usage=Usage(input_tokens=10, output_tokens=3),
                model=MODELS["openai"],
            ),
        )
        for request in answered
    )
    runs = {}
    for label, given in (("shaped", items), ("general", _general(items))):
        attempt = intake(
            backend,
            given,
            RunDirectory(tmp_path / label),
            cache=ResultCache(tmp_path / "cache"),
            prices=default_price_table(),
            max_requests_per_batch=None,
            max_bytes_per_batch=None,
            allow_unknown_models=False,
            wire_token="0123456789ab",
        )
        runs[label] = (attempt.model_dump(), _files(tmp_path / label))
    assert runs["shaped"] == runs["general"]
    attempt = runs["shaped"][0]
    assert attempt["cached"] == len(answered)
    assert bool(attempt["estimate"]["models"]) == (step > 1), "an estimate of the requests sent only"


@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini", "bedrock-claude", "vertex"])
def test_a_shape_has_a_native_template_on_backends_that_write_the_text_as_given(name: str) -> None:
    from batch_provider.core.split import _encoder_as

    backend = BACKENDS[name]()
    item = next(item for item in _items(MODELS[name]) if type(item) is ShapedRequest)
    template = item.shape.native(_encoder_as(backend), ("bpxa01n999999998", "bpxa01n999999999"), None, 10**6)
    assert template is not None
    general = _encoder_as(backend)(item.request(), "bpxa01n000000007")
    assert template.line("bpxa01n000000007", item.text) == general.line
    assert (template.group, template.model, template.endpoint) == (
        general.group,
        general.model,
        general.endpoint,
    )
    assert template.line("bpxa01n000000007", "x" * 10**6) is None, (
        "over the size limit: the general path decides"
    )
    provider = backend.provider.value
    assert item.shape.cache_key(provider, item.text) == ResultCache.key(provider, item.request())


def test_a_text_inside_a_larger_string_has_no_template() -> None:
    """Llama on Bedrock writes the text inside its prompt string: those rows go the general path."""
    from batch_provider.core.split import _encoder_as

    backend = BACKENDS["bedrock-llama"]()
    item = next(item for item in _items(MODELS["bedrock-llama"]) if type(item) is ShapedRequest)
    assert (
        item.shape.native(_encoder_as(backend), ("bpxa01n999999998", "bpxa01n999999999"), None, 10**6) is None
    )


def test_rows_of_another_form_are_not_shaped() -> None:
    assert row_form({"messages": [{"role": "user", "content": "hi"}], "system": "s"}) is not None
    for row in (
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]},
        {"messages": [{"role": "user", "content": ["hi"]}]},
        {"messages": [{"role": "user", "content": "hi", "name": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}], "system": None},
        {"messages": [{"role": "user", "content": "hi"}], "model": "m"},
        {"messages": ({"role": "user", "content": "hi"},)},
    ):
        assert row_form(row) is None, row


def test_rows_with_ids_of_their_own_per_row_columns_or_a_callable_make_no_shapes() -> None:
    rows = [{"messages": [{"role": "user", "content": f"t{n}"}], "x": f"x{n}"} for n in range(3)]
    table = [{"x": f"x{n}", "m": "gpt-4o"} for n in range(3)]
    for builder, given in (
        (RequestBuilder(model="m", id_field="x"), rows),
        (RequestBuilder(model="m", template="{{ x }}", columns={"model": "m"}), table),
        (
            RequestBuilder(
                model="m", build=lambda row: {"messages": [{"role": "user", "content": row["x"]}]}
            ),
            table,
        ),
    ):
        items = list(builder.render(enumerate(given, start=1)))
        assert len(items) == 3 and not any(type(item) is ShapedRequest for item in items)


def test_a_string_is_encoded_the_same_wherever_it_stands() -> None:
    """Each encoder a template fills writes a string alone as it writes it inside a document:
    checked on a text holding every code point outside the surrogates."""
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert pydantic_core.to_json(text) in Message(role="user", content=text).model_dump_json().encode()
    assert dumps_line({"content": text}) == b'{"content":' + msgspec.json.encode(text) + b"}"
    keyed = json.dumps([{"content": text}], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert keyed == '[{"content":' + json.dumps(text, ensure_ascii=False) + "}]"
