"""moto's S3 beside the emulator, for the Bedrock face (``--with-s3``).

moto has no model-invocation-job operations (spec C.5), so the emulator serves those itself and
keeps the data in a real S3 API: moto's, on loopback, in this process. Its objects live in
memory: a restarted emulator starts with an empty S3 (the job records survive in the data dir).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .bedrock_state import S3_ENDPOINT_ENV


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
