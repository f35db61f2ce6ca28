"""Part files are packed once their batches exist, and read the same plain or packed, locally and on S3."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_provider.core.part_files import iter_part_lines, open_part, pack, pack_parts, packed_path
from batch_provider.core.split import part_ids_path
from batch_provider.core.wire_ids import SIDECAR_HEADER, read_sidecar_file, sidecar_line

LINES = [
    json.dumps({"custom_id": f"bp{n:09d}", "body": {"model": "m", "messages": [{"content": f"ticket {n}"}]}})
    for n in range(500)
]


@pytest.fixture(scope="module")
def moto() -> Iterator[Any]:
    from moto_support import aws_connection, moto_s3

    with moto_s3("parts") as (s3, endpoint):
        os.environ["AIRFLOW_CONN_MOTO_PARTS"] = aws_connection(endpoint)
        try:
            yield s3
        finally:
            os.environ.pop("AIRFLOW_CONN_MOTO_PARTS", None)


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path: Path) -> Any:
    if request.param == "local":
        return tmp_path / "requests"
    from airflow.sdk import ObjectStoragePath

    request.getfixturevalue("moto")
    return ObjectStoragePath(f"s3://moto_parts@parts/{request.node.name}".replace("[", "-").replace("]", ""))


def write_part(folder: Any) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / "part-00000.jsonl"
    with part.open("wb") as fh:
        fh.write("".join(line + "\n" for line in LINES).encode())
    with part_ids_path(part).open("wb") as fh:
        fh.write(SIDECAR_HEADER + b"\n")
        for n in range(len(LINES)):
            fh.write(sidecar_line(n % 2 == 0, f"bp{n:09d}", f"row/{n}") + b"\n")
    return part


def test_packed_parts_read_as_the_plain_ones_did(folder: Any) -> None:
    part = write_part(folder)
    before = list(iter_part_lines(part))
    ids_before = read_sidecar_file(part_ids_path(part))
    size = len(b"\n".join(before))

    assert pack_parts([part]) == 2
    assert not part.exists() and not part_ids_path(part).exists()
    assert packed_path(part).exists() and packed_path(part_ids_path(part)).exists()
    with packed_path(part).open("rb") as fh:
        packed = fh.read()
    assert len(packed) * 10 < size, "request lines repeat their keys and model: they shrink"
    assert gzip.decompress(packed).decode().splitlines() == LINES

    assert list(iter_part_lines(part)) == before
    ids = read_sidecar_file(part_ids_path(part))
    assert ids is not None and ids_before is not None
    assert ids.rows == ids_before.rows and ids.wants == ids_before.wants
    assert ids.row_ids()[:2] == ["row/0", "row/1"]
    assert pack_parts([part]) == 0, "packing twice changes nothing"
    assert list(iter_part_lines(part)) == before


def test_a_crash_between_the_packed_copy_and_the_removal_leaves_both_readable(tmp_path: Path) -> None:
    part = write_part(tmp_path)
    packed_path(part).write_bytes(gzip.compress(part.read_bytes()))  # the copy written, then killed
    assert list(iter_part_lines(part)) == [line.encode() for line in LINES]
    assert pack(part) is True
    assert not part.exists()
    assert list(iter_part_lines(part)) == [line.encode() for line in LINES]
    assert not list(tmp_path.glob(".*.tmp")), "the packed copy is written through a temporary file"


def test_a_missing_part_names_itself(tmp_path: Path) -> None:
    missing = tmp_path / "part-00009.jsonl"
    with pytest.raises(FileNotFoundError, match=r"part-00009\.jsonl"), open_part(missing):
        pass
    assert read_sidecar_file(tmp_path / "part-00009.ids") is None
