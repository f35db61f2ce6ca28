"""Input readers and request rendering: every row yields once, bad rows are rejected with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch_provider.core.models import LLMRequest, RejectedRow, RequestKind
from batch_provider.core.records import EmptyInputError, InputError, iter_list, iter_records
from batch_provider.core.render import RequestBuilder


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_jsonl_rows_bom_blank_lines_and_bad_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "in.jsonl",
        b'\xef\xbb\xbf{"id": "a", "text": "one"}\n\n'
        b'{"id": "b", "text": \n[1, 2]\n{"id": "c", "text": "caf\xe9"}\n'
        b'{"id": "d", "text": "last"}',
    )
    rows = list(iter_records(path))
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6]
    assert rows[0][1] == {"id": "a", "text": "one"}
    bad_json, not_object, bad_utf8 = rows[1][1], rows[2][1], rows[3][1]
    assert isinstance(bad_json, RejectedRow) and "not valid JSON" in bad_json.reason and bad_json.row == 3
    assert isinstance(not_object, RejectedRow) and "list" in not_object.reason
    assert isinstance(bad_utf8, RejectedRow) and "UTF-8" in bad_utf8.reason
    assert rows[4][1] == {"id": "d", "text": "last"}


def test_csv_ragged_rows_rejected_others_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", b'id,text\n1,hello\n2,"a, quoted, text"\n3,too,many\n')
    rows = list(iter_records(path))
    assert rows[0] == (1, {"id": "1", "text": "hello"})
    assert rows[1] == (2, {"id": "2", "text": "a, quoted, text"})
    assert isinstance(rows[2][1], RejectedRow) and "3 fields but the header has 2" in rows[2][1].reason


def test_parquet_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["1", "2"]}), path)
    assert list(iter_records(path)) == [(1, {"id": "x", "text": "1"}), (2, {"id": "y", "text": "2"})]


def test_whole_file_problems_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list(iter_records(tmp_path / "missing.jsonl"))
    with pytest.raises(EmptyInputError, match="holds no rows"):
        list(iter_records(write(tmp_path / "empty.jsonl", b"\n\n")))
    with pytest.raises(InputError, match="cannot tell the format"):
        list(iter_records(write(tmp_path / "in.txt", b"x")))
    with pytest.raises(InputError, match="not a readable Parquet"):
        list(iter_records(write(tmp_path / "bad.parquet", b"not parquet at all")))
    with pytest.raises(EmptyInputError):
        list(iter_list([]))


def test_template_renders_and_rejects_rows_missing_a_column() -> None:
    builder = RequestBuilder(
        template="Classify: {{ subject }} -- {{ body }}",
        model="gpt-6-luna",
        max_tokens=50,
        system="Be terse.",
    )
    items = list(
        builder.render(iter_list([{"id": 7, "subject": "s", "body": "b"}, {"id": 8, "subject": "s"}]))
    )
    ok, bad = items
    assert isinstance(ok, LLMRequest)
    assert ok.custom_id == "7" and ok.messages[0].content == "Classify: s -- b" and ok.system == "Be terse."
    assert ok.model == "gpt-6-luna" and ok.max_tokens == 50
    assert isinstance(bad, RejectedRow) and bad.field == "prompt_template" and "'body'" in bad.reason
    assert bad.row == 2 and bad.custom_id == "8"


def test_explicit_id_field_is_required_and_rows_without_ids_are_numbered() -> None:
    strict = RequestBuilder(template="{{ t }}", id_field="ticket", model="m", max_tokens=5)
    [missing] = strict.render(iter_list([{"t": "x"}]))
    assert isinstance(missing, RejectedRow) and missing.field == "ticket"
    loose = RequestBuilder(template="{{ t }}", model="m", max_tokens=5)
    [numbered] = loose.render(iter_list([{"t": "x"}]))
    assert isinstance(numbered, LLMRequest) and numbered.custom_id == "row-1"


def test_callable_builder_errors_reject_the_row_only() -> None:
    def build(row: dict) -> dict:
        if row["n"] == 2:
            raise KeyError("boom")
        return {"messages": [{"role": "user", "content": f"n={row['n']}"}]}

    builder = RequestBuilder(build=build, model="m", max_tokens=10)
    first, second = builder.render(iter_list([{"n": 1}, {"n": 2}]))
    assert isinstance(first, LLMRequest) and first.model == "m" and first.messages[0].content == "n=1"
    assert isinstance(second, RejectedRow) and second.field == "build_request" and "KeyError" in second.reason


def test_rows_that_are_requests_native_or_neutral() -> None:
    openai_line = {
        "custom_id": "o1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "hi"},
    }
    anthropic_line = {
        "custom_id": "a1",
        "params": {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": []},
    }
    neutral = {"custom_id": "n1", "kind": "embedding", "input": "vector me", "model": "e"}
    unknown = {"custom_id": "u1", "prompt": "what field is this?"}
    o, a, n, u = RequestBuilder().render(iter_list([openai_line, anthropic_line, neutral, unknown]))
    assert isinstance(o, LLMRequest) and o.endpoint == "/v1/embeddings" and o.native == openai_line["body"]
    assert isinstance(a, LLMRequest) and a.native == anthropic_line["params"]
    assert isinstance(n, LLMRequest) and n.kind is RequestKind.EMBEDDING
    assert isinstance(u, RejectedRow) and u.field == "prompt"


def test_rejected_row_becomes_a_rejected_record() -> None:
    record = RejectedRow(row=4, field="text", reason="empty").to_record()
    assert json.loads(record.model_dump_json())["status"] == "rejected"
    assert record.custom_id == "row-4" and record.error is not None and record.error.retryable is False
