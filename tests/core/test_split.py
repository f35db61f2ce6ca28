"""Streaming split: limits, groups, rejections, duplicates, fingerprint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.core.jsonl import iter_path_lines
from batch_provider.core.limits import ANTHROPIC_LIMITS
from batch_provider.core.models import LLMRequest, RejectedRow
from batch_provider.core.reconcile import expected_ids
from batch_provider.core.split import (
    SeenIds,
    fingerprint_file,
    fingerprint_lines,
    part_ids_path,
    split_requests,
)


def req(i: int, model: str = "m1", **fields) -> LLMRequest:
    return LLMRequest(
        custom_id=f"r-{i}",
        model=model,
        max_tokens=4,
        messages=[{"role": "user", "content": f"q{i}"}],
        **fields,
    )


def test_chunks_respect_count_limit_and_keep_every_request(tmp_path: Path) -> None:
    backend = AnthropicBackend(api_key="k")
    limits = backend.limits.lowered(max_requests_per_batch=3)
    rejected: list[RejectedRow] = []
    stream = split_requests(
        (req(i) for i in range(8)), backend, tmp_path / "parts", limits=limits, on_reject=rejected.append
    )
    chunks = list(stream)
    assert [c.request_count for c in chunks] == [3, 3, 2]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert [c.path.name for c in chunks] == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    ids = [backend.custom_id_of(line) for c in chunks for line in iter_path_lines(c.path)]
    assert ids == [f"r-{i}" for i in range(8)]
    assert all(c.byte_size == c.path.stat().st_size for c in chunks)
    assert not rejected
    lines = [line for c in chunks for line in iter_path_lines(c.path)]
    assert stream.fingerprint == fingerprint_lines(lines)
    assert stream.counts.accepted == 8 and stream.counts.chunks == 3


def test_byte_limit_counts_framing(tmp_path: Path) -> None:
    backend = AnthropicBackend(api_key="k")
    line_size = len(backend.encode(req(0)).line) + 1
    limits = replace(ANTHROPIC_LIMITS, max_bytes_per_batch=backend.body_overhead_bytes + 2 * line_size)
    chunks = list(split_requests((req(i) for i in range(5)), backend, tmp_path, limits=limits))
    assert [c.request_count for c in chunks] == [2, 2, 1]
    assert all(c.byte_size + backend.body_overhead_bytes <= limits.max_bytes_per_batch for c in chunks)


def test_openai_groups_one_model_per_chunk(tmp_path: Path) -> None:
    backend = OpenAIBackend(api_key="k")
    requests = [req(i, model="a" if i % 2 else "b") for i in range(6)]
    requests.append(req(6, model="a", endpoint="/v1/responses"))
    chunks = list(split_requests(requests, backend, tmp_path))
    by_group = {c.group: c for c in chunks}
    assert set(by_group) == {"/v1/chat/completions b", "/v1/chat/completions a", "/v1/responses a"}
    for chunk in chunks:
        models = {json.loads(line)["body"]["model"] for line in iter_path_lines(chunk.path)}
        assert models == {chunk.model}


def test_rejections_and_duplicates(tmp_path: Path) -> None:
    backend = AnthropicBackend(api_key="k")
    requests = [req(0), req(1), req(0), req(2)]
    requests.append(
        LLMRequest(custom_id="bad id", model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    )
    requests.append(LLMRequest(custom_id="no-max", model="m", messages=[{"role": "user", "content": "x"}]))
    rejected: list[RejectedRow] = []
    stream = split_requests(requests, backend, tmp_path, on_reject=rejected.append)
    chunks = list(stream)
    assert sum(c.request_count for c in chunks) == 3
    assert [(r.row, r.custom_id, r.field) for r in rejected] == [
        (3, "r-0", "custom_id"),
        (5, "bad id", "custom_id"),
        (6, "no-max", "max_tokens"),
    ], "rows are 1-based positions when requests carry no input row"
    requests[2].at_row(40)
    rejected.clear()
    list(split_requests(requests, backend, tmp_path / "again", on_reject=rejected.append))
    assert rejected[0].row == 40, "a request's own input row wins"
    assert "duplicate" in rejected[0].reason
    assert stream.counts.inputs == 6 and stream.counts.rejected == 3


def test_fingerprint_is_stable_across_runs(tmp_path: Path) -> None:
    backend = OpenAIBackend(api_key="k")
    first = split_requests([req(i) for i in range(10)], backend, tmp_path / "a")
    second = split_requests([req(i) for i in range(10)], backend, tmp_path / "b")
    list(first), list(second)
    assert first.fingerprint == second.fingerprint
    [chunk] = list(split_requests([req(i) for i in range(10)], backend, tmp_path / "c"))
    assert fingerprint_file(chunk.path) == first.fingerprint


def test_seen_ids_grows_and_detects_duplicates() -> None:
    for exact in (False, True):
        seen = SeenIds(exact=exact, capacity=4)
        assert all(seen.add(f"id-{i}") for i in range(5000))
        assert not any(seen.add(f"id-{i}") for i in range(0, 5000, 7))
        assert len(seen) == 5000
        assert all(f"id-{i}" in seen for i in range(0, 5000, 3))
        assert not any(f"other-{i}" in seen for i in range(5000))


def test_object_storage_parts_dir() -> None:
    """Any UPath-like directory works: only ``/``, ``open("wb")`` and ``mkdir`` are used."""
    from upath import UPath

    parts = UPath("memory://split-test/run-1/parts")
    backend = AnthropicBackend(api_key="k")
    stream = split_requests(
        (req(i) for i in range(5)), backend, parts, limits=backend.limits.lowered(max_requests_per_batch=2)
    )
    chunks = list(stream)
    assert [c.request_count for c in chunks] == [2, 2, 1]
    assert str(chunks[0].path).startswith("memory://")
    assert fingerprint_file(chunks[0].path) == fingerprint_lines(iter_path_lines(chunks[0].path))
    assert [backend.custom_id_of(line) for line in iter_path_lines(chunks[2].path)] == ["r-4"]
    assert expected_ids(chunks[2].path, backend) == {"r-4": False}


def test_ids_sidecar_lists_each_part_in_order_with_json_flags(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    backend = OpenAIBackend(api_key="k")
    requests = [req(i, response_schema=schema if i % 3 == 0 else None) for i in range(7)]
    limits = backend.limits.lowered(max_requests_per_batch=4)
    chunks = list(split_requests(requests, backend, tmp_path / "parts", limits=limits))
    from_parts = [
        {backend.custom_id_of(line): backend.wants_json(line) for line in iter_path_lines(c.path)}
        for c in chunks
    ]
    assert from_parts == [
        {"r-0": True, "r-1": False, "r-2": False, "r-3": True},
        {"r-4": False, "r-5": False, "r-6": True},
    ]
    assert [part_ids_path(c.path).name for c in chunks] == ["part-00000.ids", "part-00001.ids"]
    for chunk, expected in zip(chunks, from_parts, strict=True):
        chunk.path.unlink()  # the sidecar alone answers
        assert list(expected_ids(chunk.path, backend).items()) == list(expected.items())


def test_expected_ids_without_a_sidecar_decode_the_part_file(tmp_path: Path) -> None:
    backend = AnthropicBackend(api_key="k")
    (chunk,) = split_requests([req(i) for i in range(3)], backend, tmp_path / "parts")
    part_ids_path(chunk.path).unlink()
    assert expected_ids(chunk.path, backend) == {"r-0": False, "r-1": False, "r-2": False}
