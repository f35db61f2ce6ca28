"""The run's final results file, as JSONL (default) or Parquet: writers and readers.

Invariants:
- One copy of each success: the final file (``results.jsonl`` or ``results.parquet``) is the only
  place a collected answer is kept. Collecting attempt N rewrites it from the previous final file
  (every row not of attempt N, cache hits included) plus attempt N's answers, so collecting again
  gives the same rows and never twice the same ``custom_id``.
- Before the first collect the cache hits are in ``attempt-1/cached.jsonl``; once a final file
  exists it holds them (``cached`` true) and is read instead.
- The raw provider body is kept only when asked (``keep_raw``); an embedding is stored once, in
  ``embedding`` (Parquet: a fixed-size list of float32).
- Parquet is written in row groups as answers stream in: memory holds one row group, never the
  run. Its schema is fixed by the first row group (or the previous file): a later embedding of
  another length is an error naming the row, never a silently wrong column.
- Files are written whole or not at all (:func:`~batch_provider.core.rundir.atomic_write`).

The Parquet file's columns and its rows as records are in :mod:`batch_provider.core.parquet_rows`.
"""

from __future__ import annotations

import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import msgspec

from batch_provider.core.models import ResultRecord, assign
from batch_provider.core.parquet_rows import (
    DICTIONARY_COLUMNS,
    USAGE_FIELDS,
    column_names,
    conform,
    iter_parquet_rows,
    json_text,
    load_pyarrow,
    record_of_row,
    results_schema,
)
from batch_provider.core.rundir import RunDirectory, atomic_write

ResultsFormat = Literal["jsonl", "parquet"]
RESULTS_FORMATS: tuple[str, ...] = ("jsonl", "parquet")
_ROW_GROUP_ROWS = 8192
_ROW_GROUP_BYTES = 32 << 20


def check_results_format(fmt: str) -> ResultsFormat:
    """``fmt`` when it is a known results format and its library is installed; else a clear error
    (raised before anything is sent or paid)."""
    if fmt not in RESULTS_FORMATS:
        raise ValueError(f"unknown results_format {fmt!r}; use one of {', '.join(RESULTS_FORMATS)}")
    if fmt == "parquet":
        load_pyarrow()
    return fmt  # type: ignore[return-value]


def results_path(run_dir: RunDirectory, fmt: str) -> Any:
    return run_dir.results_parquet if fmt == "parquet" else run_dir.results


def existing_results(run_dir: RunDirectory) -> tuple[Any, str] | None:
    """(path, format) of the run's final results file, or None before the first collect."""
    for fmt in ("parquet", "jsonl"):
        path = results_path(run_dir, fmt)
        if path.exists():
            return path, fmt
    return None


class _Seen(msgspec.Struct):
    attempt: int = 1
    cached: bool = False


_read_seen = msgspec.json.Decoder(_Seen).decode


def _jsonl_lines(path: Any) -> Iterator[bytes]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


class JsonlResults:
    """``results.jsonl``: one line per success, ``None`` fields left out."""

    fmt = "jsonl"

    def __init__(self, fh: Any, keep_raw: bool):
        self._fh = fh
        self._keep_raw = keep_raw
        self.rows = 0

    def write(self, record: ResultRecord, line: bytes | None = None) -> None:
        """Append ``record``; ``line``, when given, is its ``json_line()`` already made (with
        ``raw`` already dropped unless kept)."""
        if line is None:
            if not self._keep_raw and record.raw is not None:
                assign(record, "raw", None)
            line = record.json_line()
        self._fh.write(line)
        self.rows += 1

    def keep_previous(self, run_dir: RunDirectory, attempt: int) -> None:
        found = existing_results(run_dir)
        if found is None:
            for line in _jsonl_lines(run_dir.cached):
                self._fh.write(line)
                self.rows += 1
            return
        path, fmt = found
        if fmt != "jsonl":
            for record in iter_records(path, fmt):
                if record.cached or record.attempt != attempt:
                    self.write(record)
            return
        for line in _jsonl_lines(path):
            seen = _read_seen(line)
            if seen.cached or seen.attempt != attempt:
                self._fh.write(line)
                self.rows += 1

    def close(self) -> None:
        """Nothing to finish: the lines are in the file."""


class ParquetResults:
    """``results.parquet``: typed columns, embeddings as ``fixed_size_list<float32>[dim]``."""

    fmt = "parquet"

    def __init__(self, fh: Any, keep_raw: bool):
        self._pa = load_pyarrow()
        self._fh = fh
        self._keep_raw = keep_raw
        self._writer: Any = None
        self._schema: Any = None
        self._dim: int | None = None
        self._columns: dict[str, list[Any]] = {name: [] for name in column_names(keep_raw)}
        self._vectors: list[bytes] = []
        self._buffered = 0
        self._pending = 0
        self.rows = 0

    def write(self, record: ResultRecord, line: bytes | None = None) -> None:
        """Append ``record`` to the next row group (``line`` is not used: columns are typed)."""
        cols = self._columns
        cols["custom_id"].append(record.custom_id)
        cols["status"].append(record.status.value)
        cols["output_text"].append(record.output_text)
        cols["parsed"].append(json_text(record.parsed))
        vector = record.embedding
        if vector is not None:
            if self._dim is None and self._schema is None:
                self._dim = len(vector)
            if self._dim is not None and len(vector) != self._dim:
                raise ValueError(
                    f"row {record.custom_id}: an embedding of {len(vector)} values, but this "
                    f"results.parquet holds {self._dim}-value embeddings; write mixed embedding "
                    "sizes with results_format='jsonl'"
                )
            packed = array.array("f", vector).tobytes()
            self._vectors.append(packed)
            self._buffered += len(packed)
        else:
            self._vectors.append(b"")
        cols["finish_reason"].append(record.finish_reason)
        for name in USAGE_FIELDS:
            cols[name].append(getattr(record.usage, name))
        cols["model"].append(record.model)
        cols["batch_id"].append(record.batch_id)
        cols["provider"].append(record.provider)
        cols["attempt"].append(record.attempt)
        cols["row"].append(record.row)
        cols["cached"].append(record.cached)
        error = record.error
        cols["error_type"].append(error.type if error else None)
        cols["error_message"].append(error.message if error else None)
        cols["error_code"].append(error.code if error else None)
        if self._keep_raw:
            cols["raw"].append(json_text(record.raw))
        self._buffered += len(record.output_text or "") + 64
        self._pending += 1
        self.rows += 1
        if self._pending >= _ROW_GROUP_ROWS or self._buffered >= _ROW_GROUP_BYTES:
            self._flush()

    def keep_previous(self, run_dir: RunDirectory, attempt: int) -> None:
        found = existing_results(run_dir)
        if found is None:
            for line in _jsonl_lines(run_dir.cached):
                self.write(ResultRecord.model_validate_json(line))
            return
        path, fmt = found
        if fmt != "parquet":
            for record in iter_records(path, fmt):
                if record.cached or record.attempt != attempt:
                    self.write(record)
            return
        pa = self._pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        with path.open("rb") as fh:
            previous = pq.ParquetFile(fh)
            self._adopt(previous.schema_arrow)
            for batch in previous.iter_batches(batch_size=1024):
                keep = pc.or_(batch.column("cached"), pc.not_equal(batch.column("attempt"), attempt))
                kept = pa.Table.from_batches([batch]).filter(keep)
                if kept.num_rows:
                    self._writer.write_table(conform(pa, kept, self._schema))
                    self.rows += kept.num_rows

    def _adopt(self, schema: Any) -> None:
        """Take the previous file's embedding size, so old and new rows share one schema."""
        embedding = schema.field("embedding").type
        self._dim = getattr(embedding, "list_size", None)
        self._open(self._dim)

    def _open(self, dim: int | None) -> None:
        import pyarrow.parquet as pq

        self._schema = results_schema(self._pa, dim, keep_raw=self._keep_raw)
        self._writer = pq.ParquetWriter(
            self._fh,
            self._schema,
            compression="zstd",
            use_dictionary=DICTIONARY_COLUMNS,
            # float32 bytes split by position compress (the exponents) where plain ones do not
            use_byte_stream_split=["embedding.list.element"],
        )

    def _flush(self) -> None:
        if not self._pending:
            return
        pa = self._pa
        if self._writer is None:
            self._open(self._dim)
        arrays = []
        for field in self._schema:
            if field.name == "embedding":
                arrays.append(self._embedding_array(field.type))
            else:
                arrays.append(pa.array(self._columns[field.name], type=field.type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        for values in self._columns.values():
            values.clear()
        self._vectors.clear()
        self._buffered = 0
        self._pending = 0

    def _embedding_array(self, kind: Any) -> Any:
        pa = self._pa
        present = [bool(v) for v in self._vectors]
        mask = None if all(present) else pa.array([not p for p in present], type=pa.bool_())
        if self._dim is None:
            if mask is not None and not any(present):
                return pa.nulls(len(self._vectors), type=kind)
            offsets = [0]
            for vector in self._vectors:
                offsets.append(offsets[-1] + len(vector) // 4)
            floats = pa.py_buffer(b"".join(self._vectors))
            values = pa.Array.from_buffers(pa.float32(), offsets[-1], [None, floats])
            return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values, mask=mask)
        floats = pa.py_buffer(b"".join(v or bytes(4 * self._dim) for v in self._vectors))
        values = pa.Array.from_buffers(pa.float32(), len(self._vectors) * self._dim, [None, floats])
        return pa.FixedSizeListArray.from_arrays(values, self._dim, mask=mask)

    def close(self) -> None:
        self._flush()
        if self._writer is None:
            self._open(self._dim)
        self._writer.close()


@contextmanager
def open_results(run_dir: RunDirectory, fmt: str, *, keep_raw: bool = False) -> Iterator[Any]:
    """A results writer whose file replaces the run's final results file when the block ends
    without error (and is discarded when it raises)."""
    with atomic_write(results_path(run_dir, fmt)) as fh:
        writer = ParquetResults(fh, keep_raw) if fmt == "parquet" else JsonlResults(fh, keep_raw)
        yield writer
        writer.close()


def remove_other_formats(run_dir: RunDirectory, fmt: str) -> None:
    """Delete a results file of the other format (left by an earlier collect with another
    ``results_format``): its rows are in the new file."""
    for other in RESULTS_FORMATS:
        if other != fmt:
            path = results_path(run_dir, other)
            if path.exists():
                path.unlink()


def iter_records(path: Any, fmt: str) -> Iterator[ResultRecord]:
    """Each row of a results file as a :class:`ResultRecord`."""
    if fmt == "jsonl":
        for line in _jsonl_lines(path):
            yield ResultRecord.model_validate_json(line)
        return
    for row in iter_parquet_rows(path):
        yield record_of_row(row)


def count_results(run_dir: RunDirectory) -> int:
    """Rows of the run's final results file (the cache hits alone before the first collect)."""
    found = existing_results(run_dir)
    if found is None:
        return sum(1 for _ in _jsonl_lines(run_dir.cached))
    path, fmt = found
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with path.open("rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    # written by JsonlResults: one newline-terminated line per row, no blank line
    lines = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines
