"""Create the bucket of BATCH_PROVIDER_RUN_PATH through its Airflow connection, if it is missing.

Run by the airflow-init service. The path looks like ``s3://<conn_id>@<bucket>/<prefix>``; the
connection (``AIRFLOW_CONN_<CONN_ID>``) gives the endpoint (the ``s3`` service, or AWS).
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlsplit


def main() -> int:
    run_path = os.environ.get("BATCH_PROVIDER_RUN_PATH", "")
    parts = urlsplit(run_path)
    if parts.scheme != "s3":
        print(f"run path {run_path!r} is not on S3: no bucket to create")
        return 0
    conn_id, _, bucket = parts.netloc.rpartition("@")
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id or "aws_default")
    for attempt in range(30):
        try:
            if hook.check_for_bucket(bucket):
                print(f"bucket {bucket} exists")
            else:
                hook.create_bucket(bucket_name=bucket)
                print(f"bucket {bucket} created")
            return 0
        except Exception as exc:  # the S3 service may still be starting
            print(f"S3 not ready ({type(exc).__name__}: {exc}); retry {attempt + 1}/30", file=sys.stderr)
            time.sleep(2)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
