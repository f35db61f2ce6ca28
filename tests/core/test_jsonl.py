"""Streaming JSONL helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from batch_provider.core.jsonl import JsonlWriter, aiter_lines, iter_path_lines, read_jsonl
from batch_provider.core.models import Usage


def test_writer_and_readers_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    with JsonlWriter(path, buffer_bytes=8) as writer:
        writer.write({"a": "é"})
        writer.write(Usage(input_tokens=1))
        writer.write_line(b'{"b":2}')
    assert writer.lines == 3 and writer.bytes == path.stat().st_size
    assert next(iter(read_jsonl(path))) == {"a": "é"}
    path.write_bytes(b'{"a":1}\r\n\n  \n{"b":2}')
    assert list(iter_path_lines(path)) == [b'{"a":1}', b'{"b":2}']


async def test_aiter_lines_flags_unterminated_tail() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"a":', b'1}\n\n{"b"', b":2}\r\n", b'{"c":'):
            yield part

    assert [x async for x in aiter_lines(chunks())] == [
        (b'{"a":1}', True),
        (b'{"b":2}', True),
        (b'{"c":', False),
    ]


def test_block_reader_matches_line_iteration_across_block_edges(monkeypatch) -> None:
    """Lines split over read blocks (and blocks with no newline at all) come out whole, once,
    with the same blank-line and line-end handling as iterating the file line by line."""
    import io

    from batch_provider.core import jsonl

    data = b'{"a":1}\r\n\n   \n' + b'{"long":"' + b"x" * 50 + b'"}\n{"b":2}\r\n\t\n{"tail":3}'
    expected = [raw.rstrip(b"\r\n") for raw in io.BytesIO(data) if raw.strip()]
    for block in (1, 3, 7, 64, 1 << 20):
        monkeypatch.setattr(jsonl, "_BLOCK_BYTES", block)
        assert list(jsonl.iter_lines(io.BytesIO(data))) == expected, block
    assert list(jsonl.iter_lines(io.BytesIO(b""))) == []
    assert list(jsonl.iter_lines([b"x\n", b"\n", b"y"])) == [b"x", b"y"]
