"""Layout of one run's folder, on a local path or any object store.

Invariants:
- One folder per (dag_id, run_id, task group, map index): backfills, reruns of other data
  intervals and mapped tasks never share a folder.
- Every file a run writes is named here; nothing else invents paths inside a run folder.
- Files that a later step reads are written with :func:`atomic_write`: a writer killed at any
  point leaves the old complete file or the new complete one, never a part of it.
- ``root`` may be a ``pathlib.Path`` or an ``ObjectStoragePath``/UPath: only ``/``, ``open``,
  ``exists``, ``mkdir``, ``iterdir`` and ``unlink`` are used, plus the fsspec filesystem's
  ``pipe_file(mode="create")`` and ``cat_file`` for claims (:func:`create_exclusive`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_segment(value: str) -> str:
    """A path segment from an arbitrary id: unsafe characters become ``_`` (``:`` in run ids)."""
    cleaned = _UNSAFE.sub("_", value).strip("._") or "_"
    return cleaned[:200]


class RunDirectory:
    def __init__(self, root: Any):
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r})"

    def relative(self, path: Any) -> str:
        """``path``, a file inside this folder, relative to it: how the ledger names part files."""
        return str(path)[len(str(self.root)) :].lstrip("/")

    def attempt_dir(self, attempt: int) -> Any:
        return self.root / f"attempt-{attempt}"

    def requests_dir(self, attempt: int = 1) -> Any:
        return self.attempt_dir(attempt) / "requests"

    def attempt_errors(self, attempt: int) -> Any:
        return self.attempt_dir(attempt) / "errors.jsonl"

    @property
    def cached(self) -> Any:
        """Results served from the result cache in attempt 1 (never sent)."""
        return self.attempt_dir(1) / "cached.jsonl"

    @property
    def cache_keys(self) -> Any:
        """custom_id → result-cache key of every request sent in attempt 1."""
        return self.attempt_dir(1) / "cache_keys.jsonl"

    @property
    def calibration(self) -> Any:
        """Output-token history shared by every run of the same DAG (``<base>/<dag_id>/``)."""
        return self.root.parent.parent / "_calibration.json"

    @property
    def ledger(self) -> Any:
        return self.root / "ledger.json"

    @property
    def rejects(self) -> Any:
        return self.root / "rejects.jsonl"

    @property
    def results(self) -> Any:
        return self.root / "results.jsonl"

    @property
    def results_parquet(self) -> Any:
        """The final results as Parquet, instead of ``results.jsonl`` (``results_format="parquet"``)."""
        return self.root / "results.parquet"

    @property
    def errors(self) -> Any:
        return self.root / "errors.jsonl"

    @property
    def dead_letter(self) -> Any:
        return self.root / "dead_letter.jsonl"

    @property
    def manifest(self) -> Any:
        return self.root / "manifest.json"

    @property
    def claims_dir(self) -> Any:
        """Create-if-absent claims (:mod:`batch_provider.core.claims`): the source of truth for
        which process creates which batch, and for the batch ids."""
        return self.root / "claims"

    @property
    def run_claim(self) -> Any:
        return self.claims_dir / "run.json"

    def split_claim(self, attempt: int) -> Any:
        return self.claims_dir / f"attempt-{attempt}" / "split.json"

    def chunk_claim(self, attempt: int, index: int, generation: int = 0) -> Any:
        suffix = f"-g{generation}" if generation else ""
        return self.claims_dir / f"attempt-{attempt}" / f"chunk-{index:05d}{suffix}.json"


def run_directory(
    base: Any, *, dag_id: str, run_id: str, group: str | None = None, map_index: int = -1
) -> RunDirectory:
    """The run folder for one task group of one DAG run under ``base``."""
    leaf = safe_segment(group or "batch") + (f".map-{map_index}" if map_index >= 0 else "")
    return RunDirectory(base / safe_segment(dag_id) / safe_segment(run_id) / leaf)


def local_path(path: Any) -> pathlib.Path | None:
    """``path`` as a ``pathlib.Path`` when it is on the local disk (a plain path, or a ``file://``
    object-storage path), else None. Local files are replaced by rename and claimed by hard link;
    fsspec's local filesystem would write in place and check-then-create instead."""
    if isinstance(path, pathlib.Path):
        return path
    protocol = getattr(getattr(path, "fs", None), "protocol", None)
    protocols = protocol if isinstance(protocol, tuple) else (protocol,)
    if "file" in protocols or "local" in protocols:
        return pathlib.Path(path.path)
    return None


def write_json_atomic(path: Any, payload: Any) -> None:
    """Write JSON so a reader never sees half a file (see :func:`atomic_write`)."""
    data = json.dumps(payload, indent=2, sort_keys=False, default=str).encode()
    with atomic_write(path) as fh:
        fh.write(data)


@contextmanager
def atomic_write(path: Any) -> Iterator[BinaryIO]:
    """Open ``path`` for writing so readers see the old complete file or the new complete one.

    Local disk: the bytes go to a hidden temporary file beside it, which is fsynced and renamed
    over ``path`` (then the folder is fsynced), so a kill at any point leaves the old file.
    Object storage: one object written through fsspec, which makes it visible only when the
    file is closed (one PUT, or a multipart upload completed at close); if the block raises, the
    upload is discarded rather than closed, so an error never publishes a part of the file.
    """
    local = local_path(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fh = open(tmp, "wb")  # noqa: SIM115 - closed below on every path
        try:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        os.replace(tmp, local)
        _fsync_dir(local.parent)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("wb")
    try:
        yield fh
    except BaseException:
        _discard(fh)
        raise
    fh.close()


def remove_stale_temps(folder: Any) -> None:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder`` (local disk
    only: on object storage an unfinished write leaves nothing visible). A temporary file whose
    writer (the process id in its name) still runs on this machine is left alone, so a writer at
    work beside this one is never disturbed."""
    local = local_path(folder)
    if local is None or not local.is_dir():
        return
    for tmp in local.glob(".*.tmp"):
        if not _writer_alive(tmp.name):
            tmp.unlink(missing_ok=True)


def _writer_alive(temp_name: str) -> bool:
    """Whether the process that named ``temp_name`` (``.<file>.<pid>.<hex>.tmp``) is running."""
    parts = temp_name.rsplit(".", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # this process has no write open while it cleans up
    return pid_running(pid)


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(fh: Any) -> None:
    """Drop an object-store upload without publishing it (fsspec ``discard``), then mark the
    file closed so neither ``close`` nor garbage collection uploads what was written."""
    raw = getattr(fh, "_obj", fh)  # ObjectStoragePath wraps the fsspec file for lineage
    try:
        discard = getattr(raw, "discard", None)
        if discard is not None:
            discard()
    finally:
        try:
            raw.closed = True
        except AttributeError:
            raw.close()


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: Any) -> Any:
    with path.open("rb") as fh:
        return json.loads(fh.read())


def remove_tree(path: Any) -> None:
    """Delete a folder and everything in it, locally or on an object store."""
    if isinstance(path, pathlib.Path):
        shutil.rmtree(path, ignore_errors=True)
        return
    if path.exists():
        path.fs.rm(path.path, recursive=True)


def create_exclusive(path: Any, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if nothing is there yet; True when this call created it.

    The primitive behind every claim: of several processes calling it at once, exactly one gets
    True, and a reader never sees the file half written. Local disk: a private temporary file
    hard-linked to ``path`` (``link`` fails when ``path`` exists, like ``O_EXCL``). S3 (s3fs): a
    conditional PUT ``If-None-Match: *`` (``pipe_file(..., mode="create")``). Other fsspec stores
    use their own ``mode="create"``, which for stores without a conditional write is
    check-then-write (documented in README: give concurrent submits of one run a local or S3 run
    folder).
    """
    local = local_path(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, local)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    fs, key = path.fs, path.path
    try:
        fs.pipe_file(key, data, mode="create")
    except FileExistsError:
        return False
    except OSError as exc:
        # A conditional PUT refused without s3fs recognising it (412 PreconditionFailed, or 409
        # ConditionalRequestConflict while another conditional PUT of the key is in flight).
        text = str(exc).lower()
        if "precondition" in text or "conditional" in text or "conflict" in text:
            return False
        raise
    finally:
        invalidate = getattr(fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(key)
    return True


def read_bytes_if_present(path: Any) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist (no separate, racy ``exists`` call).
    On an object store, one plain GET: a file opened for reading would fail if another process
    replaced the object meanwhile (s3fs pins the version it saw first)."""
    try:
        local = local_path(path)
        if local is not None:
            return local.read_bytes()
        fs = path.fs
        invalidate = getattr(fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(path.path)
        return fs.cat_file(path.path)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def open_replacing(path: Any) -> Iterator[Any]:
    """A binary file whose content replaces ``path`` whole when the block ends without error: on a
    local disk a temporary file renamed over it, elsewhere one upload on close. A concurrent
    reader sees the old file or the new one, never half of either."""
    local = local_path(path)
    if local is None:
        with path.open("wb") as fh:
            yield fh
        return
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            yield fh
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
