"""Streaming readers for input records: JSONL, CSV and Parquet on any path.

Invariants:
- Rows are read one at a time (Parquet: one record batch at a time); memory does not grow with
  the file.
- Every row yields exactly once, numbered from 1 in file order: either its dict, or a
  :class:`RejectedRow` saying what is wrong with it. One bad row never stops the others.
- Problems with the file as a whole (missing, empty, unknown format, unreadable Parquet schema)
  raise :class:`InputError` before anything is sent anywhere.
- A UTF-8 byte-order mark at the start of a text file is accepted and dropped.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from batch_provider.core.models import RejectedRow

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}

Row = tuple[int, dict[str, Any] | RejectedRow]


class InputError(ValueError):
    """The input as a whole cannot be read; the message says which path, why and what to do."""


class EmptyInputError(InputError):
    """The input holds no rows."""


def detect_format(path: Any, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = "." + str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        raise InputError(
            f"cannot tell the format of {path} from its suffix {suffix or '(none)'!r}; "
            f"name it .jsonl, .csv or .parquet, or pass the format ({', '.join(FORMATS)})"
        ) from None


def iter_records(path: Any, fmt: str | None = None) -> Iterator[Row]:
    """Rows of the file at ``path`` as ``(row_number, dict | RejectedRow)``."""
    kind = detect_format(path, fmt)
    if not path.exists():
        raise InputError(f"input {path} does not exist; check the path (and the data interval it came from)")
    reader = {"jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}[kind]
    count = 0
    for row in reader(path):
        count += 1
        yield row
    if count == 0:
        raise EmptyInputError(f"input {path} holds no rows: nothing to submit")


def iter_list(records: list[Any]) -> Iterator[Row]:
    """Rows of an in-memory list (for example from XCom); non-dict items are rejected."""
    if not records:
        raise EmptyInputError("the records list is empty: nothing to submit")
    for number, item in enumerate(records, start=1):
        if isinstance(item, dict):
            yield number, item
        else:
            yield number, RejectedRow(row=number, reason=f"expected an object, got {type(item).__name__}")


def _decode_lines(fh: Any, path: Any) -> Iterator[tuple[int, str | RejectedRow]]:
    for number, raw in enumerate(fh, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                number,
                RejectedRow(
                    row=number,
                    reason=f"line {number} of {path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                    "re-encode the file as UTF-8",
                ),
            )


def _iter_jsonl(path: Any) -> Iterator[Row]:
    with path.open("rb") as fh:
        for number, text in _decode_lines(fh, path):
            if isinstance(text, RejectedRow):
                yield number, text
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield (
                    number,
                    RejectedRow(
                        row=number,
                        reason=f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                        "fix the line so it holds one JSON object",
                    ),
                )
                continue
            if not isinstance(value, dict):
                yield (
                    number,
                    RejectedRow(
                        row=number, reason=f"line {number} holds a JSON {type(value).__name__}, not an object"
                    ),
                )
                continue
            yield number, value


def _iter_csv(path: Any) -> Iterator[Row]:
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="", errors="strict")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not valid UTF-8 ({exc.reason}); re-encode it as UTF-8") from None
        width = len(header)
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path} is not valid UTF-8 after row {number} ({exc.reason}); re-encode it as UTF-8"
                ) from None
            except csv.Error as exc:
                number += 1
                yield number, RejectedRow(row=number, reason=f"row {number} is not valid CSV: {exc}")
                continue
            number += 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != width:
                yield (
                    number,
                    RejectedRow(
                        row=number,
                        reason=f"row {number} has {len(cells)} fields but the header has {width}; "
                        "quote fields that contain commas",
                    ),
                )
                continue
            yield number, dict(zip(header, cells, strict=True))


def _iter_parquet(path: Any) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            "reading Parquet needs pyarrow: pip install 'airflow-provider-llm-batch[parquet]'"
        ) from None
    try:
        with path.open("rb") as fh:
            parquet = pq.ParquetFile(fh)
            number = 0
            for batch in parquet.iter_batches(batch_size=4096):
                for record in batch.to_pylist():
                    number += 1
                    yield number, record
    except (OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path} is not a readable Parquet file ({exc}); check the file") from None
