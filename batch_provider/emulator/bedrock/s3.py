"""The S3 side of the Bedrock face: where the data of model invocation jobs lives.

moto has no model-invocation-job operations, so the emulator serves those itself and keeps the data
in a real S3 API: any endpoint (``BATCH_EMULATOR_S3_ENDPOINT`` or ``POST /_emu/bedrock
{"s3_endpoint": ...}``), or moto's own S3 started beside the emulator (``--with-s3``), on loopback,
in this process. moto's objects live in memory: a restarted emulator starts with an empty S3 (the
job records survive in the data dir).

Invariants:
- S3 is only called from worker threads, through one client per endpoint.
- A job's input is read once, at create (:meth:`S3Access.copy_input`), into its local copy; its
  outputs are written once (:meth:`S3Access.write_outputs`): ``<output s3Uri>/<jobId>/<input
  file>.out`` per input file, and ``manifest.json.out``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .wire import validation

if TYPE_CHECKING:
    from .jobs import BedrockJob, BedrockSettings, JobView

S3_ENDPOINT_ENV = "BATCH_EMULATOR_S3_ENDPOINT"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri) <= 5:
        raise validation(f"Invalid S3 URI {uri!r}: expected s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class S3Access:
    """A boto3 S3 client on the configured endpoint, used from worker threads only."""

    def __init__(self, settings: BedrockSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._endpoint: str | None = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        endpoint = self.settings.s3_endpoint
        if not endpoint:
            raise validation(
                f"the emulator has no S3 endpoint: start it with --with-s3, set {S3_ENDPOINT_ENV}, "
                'or POST /_emu/bedrock {"s3_endpoint": ...}'
            )
        with self._lock:
            if self._client is None or self._endpoint != endpoint:
                import boto3
                from botocore.config import Config

                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=self.settings.region,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
                )
                self._endpoint = endpoint
            return self._client

    def copy_input(self, job: BedrockJob, local_path: Path) -> str | None:
        """Copy the job's input records (one ``.jsonl`` object, or every one under a prefix) to
        ``local_path``, giving each a ``recordId`` if it has none, and set ``job.n`` and
        ``job.files``. Returns why the job fails validation (the first problem), or None."""
        s3 = self.client()
        bucket, key = split_s3_uri(job.input_uri)
        out_bucket, _ = split_s3_uri(job.output_uri)
        try:
            s3.head_bucket(Bucket=out_bucket)
        except Exception:
            return f"The output bucket {out_bucket} does not exist or is not accessible."
        if key.endswith(".jsonl"):
            keys = [key]
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            keys = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents") or [] if o["Key"].endswith(".jsonl"))
            if not keys:
                return f"No .jsonl files found at {job.input_uri}."
        total_bytes = 0
        count = 0
        files: list[list[Any]] = []
        with local_path.open("wb") as local:
            for object_key in keys:
                try:
                    data = s3.get_object(Bucket=bucket, Key=object_key)["Body"].read()
                except Exception:
                    return f"The input file s3://{bucket}/{object_key} does not exist or is not accessible."
                if len(data) > self.settings.max_file_bytes:
                    limit = self.settings.max_file_bytes
                    return f"The input file {object_key} is over the limit of {limit} bytes."
                total_bytes += len(data)
                in_file = 0
                for number, raw in enumerate(data.split(b"\n"), start=1):
                    if not raw.strip():
                        continue
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        return f"Line {number} of {object_key} is not valid JSON."
                    if not isinstance(record, dict) or "modelInput" not in record:
                        return f"Line {number} of {object_key} has no modelInput."
                    record.setdefault("recordId", f"{count + 1:011d}")
                    local.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                    count += 1
                    in_file += 1
                files.append([object_key.rsplit("/", 1)[-1], in_file])
        job.n = count
        job.files = files
        if total_bytes > self.settings.max_job_bytes:
            return f"The job's input is over the limit of {self.settings.max_job_bytes} bytes."
        if count < self.settings.min_records:
            return (
                f"The number of records in the input ({count}) is below the minimum of "
                f"{self.settings.min_records} records per batch inference job."
            )
        if count > self.settings.max_records:
            return (
                f"The number of records ({count}) is over the limit of {self.settings.max_records} per job."
            )
        return None

    def write_outputs(self, job: BedrockJob, view: JobView, files: dict[str, list[bytes]]) -> None:
        """Write ``files`` (``<input file>.out`` name → its lines) and the job's manifest, whose token
        counts add up the ``usage`` of every ``modelOutput`` in them."""
        s3 = self.client()
        bucket, prefix = split_s3_uri(job.output_uri)
        base = "/".join(p for p in (prefix.strip("/"), job.job_id) if p)
        for name, lines in files.items():
            body = b"".join(line + b"\n" for line in lines)
            s3.put_object(Bucket=bucket, Key=f"{base}/{name}", Body=body)
        input_tokens = output_tokens = 0
        for lines in files.values():
            for line in lines:
                usage = (json.loads(line).get("modelOutput") or {}).get("usage") or {}
                input_tokens += int(usage.get("input_tokens") or usage.get("inputTokens") or 0)
                output_tokens += int(usage.get("output_tokens") or usage.get("outputTokens") or 0)
        manifest = {
            "totalRecordCount": job.n,
            "processedRecordCount": view.done,
            "successRecordCount": view.done - view.errors,
            "errorRecordCount": view.errors,
            "inputTokenCount": input_tokens,
            "outputTokenCount": output_tokens,
        }
        s3.put_object(Bucket=bucket, Key=f"{base}/manifest.json.out", Body=json.dumps(manifest).encode())


def start_local_s3(host: str = "127.0.0.1", port: int = 0) -> tuple[Any, str]:
    """Start moto's S3 in a daemon thread; returns (server, endpoint URL) and publishes the URL
    in ``BATCH_EMULATOR_S3_ENDPOINT`` for the Bedrock face."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per S3 call otherwise
    bind = "127.0.0.1" if host in ("", "0.0.0.0", "localhost") else host
    server = ThreadedMotoServer(ip_address=bind, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    endpoint = f"http://{bound_host}:{bound_port}"
    os.environ[S3_ENDPOINT_ENV] = endpoint
    return server, endpoint
