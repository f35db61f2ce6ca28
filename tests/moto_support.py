"""moto's S3 server on a free loopback port, and an Airflow ``aws`` connection pointing at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def moto_s3(*buckets: str) -> Iterator[tuple[Any, str]]:
    """Yield ``(boto3 S3 client, endpoint URL)`` with ``buckets`` created; stop the server after."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    try:
        yield s3, endpoint
    finally:
        server.stop()


def aws_connection(endpoint: str, **extra: Any) -> str:
    """An ``AIRFLOW_CONN_*`` value for an S3 endpoint (moto accepts any credentials)."""
    extras = {"region_name": "us-east-1", "endpoint_url": endpoint, **extra}
    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extras})
