"""Part files are packed once their batches exist, and read the same plain or packed, locally and on S3."""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_provider.core import part_files
from batch_provider.core.part_files import iter_part_lines, pack, pack_parts, packed_path
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
    with pytest.raises(FileNotFoundError, match=r"part-00009\.jsonl"):
        list(iter_part_lines(tmp_path / "part-00009.jsonl"))
    assert read_sidecar_file(tmp_path / "part-00009.ids") is None


def test_a_part_removed_while_read_continues_from_its_packed_copy(folder: Any) -> None:
    """What a reader sees when another process of the run packs the part under it."""
    part = write_part(folder)
    lines = iter_part_lines(part)
    first = [next(lines) for _ in range(3)]
    pack(part)  # the packed copy is written, then the plain file removed
    rest = list(lines)
    assert [line.decode() for line in first + rest] == LINES


class VanishingPart:
    """A plain part that another packer packs and removes after this reader's first read, the way
    s3fs then reports it (FileNotFoundError on the next ranged GET); a local file read through an
    open descriptor would not notice."""

    def __init__(self, real: Path) -> None:
        self.real = real
        self.name = real.name

    def with_name(self, name: str) -> Path:
        return self.real.with_name(name)

    def open(self, mode: str = "rb") -> io.BytesIO:
        return _VanishingReader(self.real.read_bytes(), lambda: pack(self.real))

    def unlink(self) -> None:
        raise FileNotFoundError(str(self.real))


class _VanishingReader(io.BytesIO):
    def __init__(self, data: bytes, other_packer: Any) -> None:
        super().__init__(data)
        self.reads = 0
        self.other_packer = other_packer

    def _tick(self) -> None:
        self.reads += 1
        if self.reads == 2:
            self.other_packer()
        if self.reads >= 2:
            raise FileNotFoundError("The specified key does not exist.")

    def read(self, size: int | None = -1) -> bytes:
        self._tick()
        return super().read(size)

    def __next__(self) -> bytes:
        self._tick()
        return super().__next__()


def test_a_packer_whose_part_another_packer_removes_leaves_that_ones_copy(tmp_path: Path) -> None:
    part = write_part(tmp_path)
    assert pack(VanishingPart(part)) is False
    assert not part.exists()
    assert [line.decode() for line in iter_part_lines(part)] == LINES
    assert not list(tmp_path.glob(".*.tmp")), "the losing packer's copy was discarded"


def test_a_reader_whose_part_is_packed_under_it_reads_every_line_once(tmp_path: Path) -> None:
    part = write_part(tmp_path)
    lines = [line.decode() for line in iter_part_lines(VanishingPart(part))]
    assert lines == LINES


def test_a_part_that_cannot_be_packed_stays_plain_and_readable(
    tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = write_part(tmp_path)
    real = part_files.atomic_write

    def failing(path: Any) -> Any:
        if path.name.endswith(".jsonl.gz"):
            raise OSError("storage unavailable")
        return real(path)

    monkeypatch.setattr(part_files, "atomic_write", failing)
    assert pack_parts([part]) == 1, "the sidecar is packed, the part is not"
    assert part.exists() and packed_path(part_ids_path(part)).exists()
    assert [line.decode() for line in iter_part_lines(part)] == LINES
    assert "Could not pack" in caplog.text and "storage unavailable" in caplog.text
