"""``atomic_write``: a reader sees the old complete file or the new complete one, on a local disk
and on S3 (moto), whether the writer fails or is still half way; what s3fs makes visible when."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from moto_support import aws_connection
from moto_support import moto_s3 as moto_s3_server

from batch_provider.core.rundir import _discard, atomic_write, remove_stale_temps, write_json_atomic


class Boom(RuntimeError):
    pass


def test_local_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "run" / "results.jsonl"
    write_json_atomic(target, {"old": True})
    with pytest.raises(Boom), atomic_write(target) as fh:
        fh.write(b'{"new": tr')
        raise Boom
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in target.parent.iterdir()] == ["results.jsonl"]


def test_local_half_written_file_is_invisible_until_done(tmp_path: Path):
    target = tmp_path / "results.jsonl"
    target.write_bytes(b"old\n")
    with atomic_write(target) as fh:
        fh.write(b"new, half")
        assert target.read_bytes() == b"old\n"
        fh.write(b" and the rest\n")
    assert target.read_bytes() == b"new, half and the rest\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_stale_temps_of_a_killed_writer_are_swept(tmp_path: Path):
    (tmp_path / f".results.jsonl.{os.getpid()}.abcd.tmp").write_bytes(b"half")
    (tmp_path / "results.jsonl").write_bytes(b"whole\n")
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


@pytest.fixture(scope="module")
def moto_s3():
    with moto_s3_server("atomic") as (s3, endpoint):
        os.environ["AIRFLOW_CONN_BP_ATOMIC"] = aws_connection(endpoint)
        yield s3


def test_s3_failure_keeps_the_old_object(moto_s3):
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath("s3://bp_atomic@atomic/run/manifest.json")
    write_json_atomic(target, {"old": True})
    with pytest.raises(Boom), atomic_write(target) as fh:
        fh.write(b'{"new": tr')
        raise Boom
    stored = moto_s3.get_object(Bucket="atomic", Key="run/manifest.json")["Body"].read()
    assert json.loads(stored) == {"old": True}
    write_json_atomic(target, {"new": True})
    assert json.loads(target.read_bytes()) == {"new": True}


def test_s3_multipart_upload_is_visible_only_when_completed(moto_s3):
    """s3fs uploads parts as its buffer fills, but the object appears only when the upload is
    completed at close; a discarded (or abandoned) upload never replaces the old object."""
    from airflow.sdk import ObjectStoragePath

    key = "run/results.jsonl"
    moto_s3.put_object(Bucket="atomic", Key=key, Body=b"old\n")
    target = ObjectStoragePath(f"s3://bp_atomic@atomic/{key}")
    block = 5 * 2**20
    part = b"x" * (block - 1) + b"\n"

    def current() -> bytes:
        return moto_s3.get_object(Bucket="atomic", Key=key)["Body"].read()

    fh = target.fs.open(target.path, "wb", block_size=block)
    fh.write(part * 2)
    fh.flush()  # two parts uploaded
    uploads = moto_s3.list_multipart_uploads(Bucket="atomic").get("Uploads", [])
    assert [u["Key"] for u in uploads] == [key]
    assert current() == b"old\n"
    _discard(fh)
    assert moto_s3.list_multipart_uploads(Bucket="atomic").get("Uploads", []) == []
    assert current() == b"old\n"

    fh = target.fs.open(target.path, "wb", block_size=block)
    fh.write(part * 2)
    fh.flush()
    assert current() == b"old\n"
    fh.close()
    assert current() == part * 2
