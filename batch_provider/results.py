"""Read a run's results as Python objects: ``load_results(summary_or_path, Ticket)``.

Invariants:
- Only successes are read (``results.jsonl``, or ``results.parquet`` when the run was collected
  with ``results_format="parquet"``): every one of them validated against the run's output type
  at collect, so turning ``parsed`` into an instance cannot fail for the same type.
- Results are streamed (:func:`iter_results`, one Parquet row group at a time);
  :func:`load_results` is the list of them.
- Without a type, the run's own (``output_type.json``, imported when it can be) is used; a run
  without one yields the ``parsed`` values as they are.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import TypeAdapter

from batch_provider.core.output_type import OutputValidator, load_output_spec
from batch_provider.core.parquet_rows import iter_parquet_rows


def _path(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.startswith("file://"):
        return pathlib.Path(value[len("file://") :])
    if "://" in value:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(value)
    return pathlib.Path(value)


def _results_file(source: Any) -> tuple[Any, Any]:
    """(results file, run folder) of a summary (the collect or retry task's return value), a run
    folder or a ``results.jsonl`` / ``results.parquet`` path."""
    if isinstance(source, Mapping):
        files = source.get("files") or {}
        if files.get("results"):
            results = _path(files["results"])
            return results, results.parent
        source = source["run_path"]
    path = _path(source)
    if path.name.endswith((".jsonl", ".parquet")):
        return path, path.parent
    parquet = path / "results.parquet"
    return (parquet if parquet.exists() else path / "results.jsonl"), path


def _parsed_values(results: Any) -> Iterator[tuple[str, Any]]:
    """(custom_id, parsed value or None) of each line or row of the results file."""
    if results.name.endswith(".parquet"):
        for row in iter_parquet_rows(results, columns=["custom_id", "parsed"]):
            parsed = row.get("parsed")
            yield row["custom_id"], json.loads(parsed) if parsed is not None else None
        return
    with results.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            yield record["custom_id"], record.get("parsed")


def iter_results(source: Any, output_type: Any = None, *, with_ids: bool = False) -> Iterator[Any]:
    """Each success of the run as an instance of ``output_type`` (default: the run's own), in the
    results file's order; ``(custom_id, instance)`` pairs with ``with_ids``. ``source`` is the
    collect or retry task's return value, the run folder, or its results file (JSONL or Parquet)."""
    results, root = _results_file(source)
    convert = _converter(output_type, root)
    for custom_id, parsed in _parsed_values(results):
        value = convert(parsed) if parsed is not None else None
        yield (custom_id, value) if with_ids else value


def load_results(source: Any, output_type: Any = None, *, with_ids: bool = False) -> list[Any]:
    """Every success of the run as an instance of ``output_type``: see :func:`iter_results`."""
    return list(iter_results(source, output_type, with_ids=with_ids))


def _converter(output_type: Any, root: Any) -> Callable[[Any], Any]:
    """parsed value → instance: of ``output_type`` when given (a schema dict: values as they
    are), else of the run's own output type."""
    if isinstance(output_type, dict):
        return _as_is
    if output_type is not None:
        return TypeAdapter(output_type).validate_python
    spec = load_output_spec(root)
    return OutputValidator(spec).instance if spec is not None else _as_is


def _as_is(value: Any) -> Any:
    return value
