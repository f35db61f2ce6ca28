"""The rows of a submit task's input: a file, or every file of a folder.

Invariants:
- Rows are numbered from 1 across all files of a folder, in file-name order; a rejected row keeps
  its number in that sequence.
- A folder with no data or text file is an :class:`EmptyInputError`, naming the suffixes read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from batch_provider.core.models import RejectedRow
from batch_provider.core.records import EmptyInputError, iter_records

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".md", ".txt", ".rst", ".html")


def iter_input_rows(path: Any, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RejectedRow]]:
    """Rows of a file, or of every file in a folder (sorted by name), numbered from 1.

    Data files (JSONL, CSV, Parquet) give one row per record; text documents (``.md``, ``.txt``,
    ``.rst``, ``.html``) give one row each: ``{"id": stem, "name", "path", "text"}``.
    """
    if not path.is_dir():
        yield from iter_records(path, fmt)
        return
    files = sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name)
    number = 0
    for file in files:
        suffix = os.path.splitext(file.name)[1].lower()
        if suffix in TEXT_SUFFIXES:
            number += 1
            with file.open("rb") as fh:
                text = fh.read().decode("utf-8-sig")
            stem = os.path.splitext(file.name)[0]
            yield number, {"id": stem, "name": file.name, "path": str(file), "text": text}
        elif suffix in DATA_SUFFIXES:
            for _, row in iter_records(file, fmt):
                number += 1
                if isinstance(row, RejectedRow):
                    row = row.model_copy(update={"row": number})
                yield number, row
    if number == 0:
        raise EmptyInputError(
            f"folder {path} holds no input files (data: {', '.join(DATA_SUFFIXES)}; "
            f"documents: {', '.join(TEXT_SUFFIXES)})"
        )
