"""The Parquet results file's columns, and its rows read back as records.

Invariant: :func:`record_of_row` of a row :class:`~batch_provider.core.result_files.ParquetResults`
wrote gives the record it was written from (the raw body only when the file kept it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from batch_provider.core.models import ResultRecord

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
DICTIONARY_COLUMNS = ["status", "finish_reason", "model", "batch_id", "provider", "error_type", "error_code"]


def load_pyarrow() -> Any:
    """pyarrow, or an ImportError that says how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            "results_format='parquet' needs pyarrow: pip install 'airflow-provider-llm-batch[parquet]' "
            "(or use results_format='jsonl')"
        ) from None
    return pyarrow


def json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def column_names(keep_raw: bool) -> list[str]:
    names = ["custom_id", "status", "output_text", "parsed", "finish_reason", *USAGE_FIELDS]
    names += ["model", "batch_id", "provider", "attempt", "row", "cached"]
    names += ["error_type", "error_message", "error_code"]
    return names + (["raw"] if keep_raw else [])


def results_schema(pa: Any, dim: int | None, *, keep_raw: bool = False) -> Any:
    """The Parquet results schema; ``embedding`` is ``fixed_size_list<float32>[dim]`` when the run's
    embedding size is known, else a list of float32 (always null in a chat run)."""
    vector = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
    fields = [
        pa.field("custom_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("output_text", pa.string()),
        pa.field("parsed", pa.string(), metadata={"content": "json"}),
        pa.field("embedding", vector),
        pa.field("finish_reason", pa.string()),
        *(pa.field(name, pa.int64()) for name in USAGE_FIELDS),
        pa.field("model", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("provider", pa.string()),
        pa.field("attempt", pa.int32()),
        pa.field("row", pa.int64()),
        pa.field("cached", pa.bool_()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("error_code", pa.string()),
    ]
    if keep_raw:
        fields.append(pa.field("raw", pa.string(), metadata={"content": "json"}))
    return pa.schema(fields)


def conform(pa: Any, table: Any, schema: Any) -> Any:
    """``table`` with exactly ``schema``'s columns (a ``raw`` column added or dropped)."""
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, type=f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def iter_parquet_rows(path: Any, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a ``results.parquet`` as dicts, one row group in memory at a time."""
    load_pyarrow()
    import pyarrow.parquet as pq

    with path.open("rb") as fh:
        parquet = pq.ParquetFile(fh)
        wanted = [c for c in columns if c in parquet.schema_arrow.names] if columns else None
        for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
            yield from batch.to_pylist()


def record_of_row(row: dict[str, Any]) -> ResultRecord:
    data: dict[str, Any] = {
        k: row.get(k)
        for k in ("custom_id", "status", "output_text", "embedding", "finish_reason", "model", "batch_id")
    }
    data.update(provider=row.get("provider"), row=row.get("row"), cached=bool(row.get("cached")))
    data["attempt"] = row.get("attempt") or 1
    data["usage"] = {name: row.get(name) or 0 for name in USAGE_FIELDS}
    if row.get("parsed") is not None:
        data["parsed"] = json.loads(row["parsed"])
    if row.get("raw") is not None:
        data["raw"] = json.loads(row["raw"])
    if row.get("error_type") is not None:
        data["error"] = {
            "type": row["error_type"],
            "message": row.get("error_message") or "",
            "code": row.get("error_code"),
            "retryable": False,
        }
    return ResultRecord.model_validate(data)


__all__ = [
    "DICTIONARY_COLUMNS",
    "USAGE_FIELDS",
    "column_names",
    "conform",
    "iter_parquet_rows",
    "json_text",
    "load_pyarrow",
    "record_of_row",
    "results_schema",
]
