"""The run's final results file over real HTTP against the emulator: each success stored once,
the raw provider body only with ``keep_raw``, JSONL by default and Parquet on request (typed
columns, embeddings as fixed-size float32 lists), complete after a retry, and readable by
``load_results`` and DuckDB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from batch_provider.backends.registry import create_backend
from batch_provider.core.cache import ResultCache
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.output_type import output_spec, save_output_spec
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.result_files import check_results_format
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches
from batch_provider.results import load_results

CHAT = RequestBuilder(template="Classify: {{ text }}", model="gpt-6-luna", max_tokens=32)
EMBED = RequestBuilder(template="{{ text }}", model="text-embedding-3-small", kind="embedding")


class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgent: bool
    summary: str


def rows(count: int, *, mark: dict[int, str] | None = None, tag: str = "") -> list[dict[str, Any]]:
    """Rows ``r-000``…; ``tag`` makes the texts differ from another test's (the emulator lets a
    transient item error pass for a request it has seen fail before)."""
    mark = mark or {}
    return [{"id": f"r-{i:03d}", "text": f"ticket {i} {tag} " + mark.get(i, "")} for i in range(count)]


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def run_once(
    emulator: Any, run_dir: Any, data: list[dict[str, Any]], builder: RequestBuilder, **collect: Any
) -> tuple[Any, Any]:
    """Submit, wait and collect attempt 1; (handle, summary)."""
    async with create_backend("openai", api_key="k", base_url=f"{emulator.base_url}/v1") as backend:
        key = RunKey(dag_id="rf", task_id="submit", run_id=str(run_dir.root.name))
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id=None,
            max_requests_per_batch=7,
            cache=collect.get("cache"),
        )
        emulator.advance(2 * 86400)
        await watch_batches(backend, handle.batch_ids, deadline=None, poll_interval_min=0.05)
        return handle, await collect_run(backend, handle, run_dir, **collect)


def folder(tmp_path: Path, name: str) -> Any:
    return run_directory(tmp_path, dag_id="rf", run_id=name)


def all_files(run_dir: Any) -> list[str]:
    return sorted(str(p.relative_to(run_dir.root)) for p in Path(run_dir.root).rglob("*") if p.is_file())


async def test_chat_results_jsonl_once_without_raw_and_raw_only_when_kept(emulator: Any, tmp_path: Path):
    data = rows(16)
    lean = folder(tmp_path, "lean")
    _, summary = await run_once(emulator, lean, data, CHAT)
    results = read_lines(lean.results)
    assert summary.succeeded == len(results) == 16 and summary.results_format == "jsonl"
    assert sorted(r["custom_id"] for r in results) == [d["id"] for d in data]
    assert all(r["output_text"] and r["usage"]["input_tokens"] > 0 and r["batch_id"] for r in results)
    assert not any("raw" in r for r in results), "the raw provider body is not kept by default"
    names = all_files(lean)
    assert [n for n in names if n.endswith(("results.jsonl", "results.parquet"))] == ["results.jsonl"]
    assert summary.files["results"] == str(lean.results)

    kept = folder(tmp_path, "kept")
    _, summary = await run_once(emulator, kept, data, CHAT, keep_raw=True)
    with_raw = read_lines(kept.results)
    assert len(with_raw) == 16 and all(r["raw"]["choices"][0]["message"]["content"] for r in with_raw)
    by_id = {r["custom_id"]: r for r in results}
    for record in with_raw:
        assert record["raw"]["choices"][0]["message"]["content"] == record["output_text"]
        lean_record = by_id[record["custom_id"]]
        assert {k: v for k, v in record.items() if k not in ("raw", "batch_id")} == {
            k: v for k, v in lean_record.items() if k != "batch_id"
        }, "only raw differs"


async def test_chat_results_parquet_typed_columns_readable_by_duckdb(emulator: Any, tmp_path: Path):
    duckdb = pytest.importorskip("duckdb")
    data = rows(20, mark={4: "[[emu:fail400]]"}, tag=tmp_path.name)
    run_dir = folder(tmp_path, "pq")
    _, summary = await run_once(emulator, run_dir, data, CHAT, results_format="parquet")
    path = run_dir.results_parquet
    assert summary.results_format == "parquet" and summary.files["results"] == str(path)
    assert not run_dir.results.exists(), "one results file, in the format asked for"
    table = pq.read_table(path)
    assert table.num_rows == summary.succeeded == 19
    schema = table.schema
    assert schema.field("custom_id").type == pa.string() and schema.field("input_tokens").type == pa.int64()
    assert schema.field("attempt").type == pa.int32() and schema.field("cached").type == pa.bool_()
    assert "raw" not in schema.names
    got = table.to_pylist()
    assert sorted(r["custom_id"] for r in got) == sorted(d["id"] for d in data if d["id"] != "r-004")
    assert all(r["status"] == "succeeded" and r["output_text"] and r["model"] for r in got)
    assert {r["batch_id"] for r in got} == {b.batch_id for b in summary.batches}
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["error_type"] is None for r in got)
    tokens = duckdb.sql(f"select sum(output_tokens), count(*) from '{path}'").fetchall()[0]
    assert tokens == (summary.usage.output_tokens, 19)


async def test_embeddings_stored_once_and_as_float32_parquet(emulator: Any, tmp_path: Path):
    duckdb = pytest.importorskip("duckdb")
    data = rows(12)
    run_dir = folder(tmp_path, "emb")
    handle, summary = await run_once(emulator, run_dir, data, EMBED)
    lines = run_dir.results.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert summary.succeeded == len(records) == 12
    for line, record in zip(lines, records, strict=True):
        vector = record["embedding"]
        assert len(vector) == 1536 and "raw" not in record
        own = len(json.dumps(vector, separators=(",", ":")))
        assert len(line) <= 1.1 * own, "the vector is stored once"
    vectors = {r["custom_id"]: r["embedding"] for r in records}

    # the same attempt collected again as Parquet replaces the JSONL file with the same rows
    async with create_backend("openai", api_key="k", base_url=f"{emulator.base_url}/v1") as backend:
        again = await collect_run(backend, handle, run_dir, results_format="parquet")
    assert again.succeeded == 12 and not run_dir.results.exists()
    table = pq.read_table(run_dir.results_parquet)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 1536)
    for row in table.to_pylist():
        expected = pa.array(vectors[row["custom_id"]], type=pa.float32()).to_pylist()
        assert row["embedding"] == expected
    ((dims,),) = duckdb.sql(f"select distinct len(embedding) from '{run_dir.results_parquet}'").fetchall()
    assert dims == 1536


@pytest.mark.parametrize("results_format", ["jsonl", "parquet"])
async def test_structured_output_loads_from_either_format(emulator: Any, tmp_path: Path, results_format: str):
    run_dir = folder(tmp_path, f"so-{results_format}")
    spec = output_spec(Ticket)
    save_output_spec(run_dir.root, spec)
    builder = RequestBuilder(
        template="Classify: {{ text }}", model="gpt-6-luna", max_tokens=400, response_schema=spec.json_schema
    )
    _, summary = await run_once(emulator, run_dir, rows(10), builder, results_format=results_format)
    tickets = load_results(summary.for_xcom(), Ticket, with_ids=True)
    assert len(tickets) == summary.succeeded == 10
    assert all(isinstance(t, Ticket) for _, t in tickets)
    assert load_results(run_dir.root, with_ids=True) == tickets, "the run's own type, found in the folder"
    if results_format == "parquet":
        parsed = pq.read_table(run_dir.results_parquet, columns=["custom_id", "parsed"]).to_pylist()
        assert {r["custom_id"]: Ticket.model_validate_json(r["parsed"]) for r in parsed} == dict(tickets)


@pytest.mark.parametrize("results_format", ["jsonl", "parquet"])
async def test_retry_run_final_file_holds_every_success_once(
    emulator: Any, tmp_path: Path, results_format: str
) -> None:
    marks = {2: "[[emu:fail500]]", 9: "[[emu:fail500]]", 13: "[[emu:fail400]]"}
    data = rows(20, mark=marks, tag=f"{tmp_path.name} {results_format}")
    run_dir = folder(tmp_path, f"retry-{results_format}")
    options = {"results_format": results_format}
    handle, first = await run_once(emulator, run_dir, data, CHAT, **options)
    assert first.succeeded == 17 and first.unresolved == 3
    async with create_backend("openai", api_key="k", base_url=f"{emulator.base_url}/v1") as backend:
        key = RunKey(dag_id="rf", task_id="submit", run_id=run_dir.root.name)
        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
        assert retry is not None and retry.counts.submitted == 2
        emulator.advance(2 * 86400)
        await watch_batches(backend, retry.batch_ids, deadline=None, poll_interval_min=0.05)
        second = await collect_run(backend, retry, run_dir, **options)
        again = await collect_run(backend, retry, run_dir, **options)  # a collect's next try
        final = write_dead_letter(backend, run_dir, max_attempts=2)
    if results_format == "parquet":
        got = pq.read_table(run_dir.results_parquet).to_pylist()
    else:
        got = read_lines(run_dir.results)
    ids = [r["custom_id"] for r in got]
    assert len(ids) == len(set(ids)) == second.succeeded == again.succeeded == final.succeeded
    dead = [r["custom_id"] for r in read_lines(run_dir.dead_letter)]
    assert sorted(ids + dead) == [d["id"] for d in data]
    assert "r-013" in dead and set(dead) <= {"r-002", "r-009", "r-013"} and final.accounted
    unresolved = read_lines(run_dir.attempt_errors(1)) + read_lines(run_dir.dead_letter)
    assert unresolved and not any("raw" in r for r in unresolved), "nor for errors"
    attempts = {r["custom_id"]: r["attempt"] for r in got}
    # a row resent after a server error is answered in attempt 2 (the emulator lets most pass)
    # or ends in the dead letter; none is lost or kept twice
    assert {i for i, a in attempts.items() if a == 2} == {"r-002", "r-009"} - set(dead)
    assert sum(1 for a in attempts.values() if a == 1) == 17
    assert not [n for n in all_files(run_dir) if n.startswith("attempt-") and "results" in n]


async def test_cache_hits_are_kept_once_in_the_results_file(emulator: Any, tmp_path: Path):
    cache = ResultCache(tmp_path / "_cache")
    data = rows(9)
    _, first = await run_once(emulator, folder(tmp_path, "warm"), data, CHAT, cache=cache)
    assert first.succeeded == 9
    run_dir = folder(tmp_path, "hits")
    _, second = await run_once(emulator, run_dir, data, CHAT, cache=cache, results_format="parquet")
    assert second.cached == 9 and second.succeeded == 9
    got = pq.read_table(run_dir.results_parquet).to_pylist()
    assert sorted(r["custom_id"] for r in got) == [d["id"] for d in data] and all(r["cached"] for r in got)
    assert not run_dir.cached.exists(), "the cache hits are in the results file only"


def test_parquet_without_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"airflow-provider-llm-batch\[parquet\]"):
        check_results_format("parquet")
    with pytest.raises(ValueError, match="unknown results_format 'csv'"):
        check_results_format("csv")
    assert check_results_format("jsonl") == "jsonl"
