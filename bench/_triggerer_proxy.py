"""A TCP proxy that adds API latency: every chunk the upstream sends back is delivered ``delay``
seconds after it arrived (order kept), so each HTTP response comes ``delay`` later.

    python bench/_triggerer_proxy.py UPSTREAM_PORT DELAY_SECONDS PORT_FILE [POLL_LOG]

Listens on 127.0.0.1 (a free port, written to PORT_FILE) and forwards to 127.0.0.1:UPSTREAM_PORT.
With POLL_LOG, each status call it forwards (``GET /v1/batches/<id>``) is written there as
``<unix time> <id>``, so the gaps between two polls of one batch can be measured.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

STATUS_CALL = re.compile(rb"GET /v1/batches/([A-Za-z0-9_-]+) HTTP")


async def forward(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    seen: Callable[[bytes], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def send() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            if seen is not None:
                seen(data)
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait(None)
    try:
        await sender
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(upstream_port: int, delay: float, port_file: Path, poll_log: IO[str] | None) -> None:
    def seen(data: bytes) -> None:
        if poll_log is not None:
            now = time.time()
            for match in STATUS_CALL.finditer(data):
                poll_log.write(f"{now:.3f} {match.group(1).decode()}\n")

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            forward(client_reader, up_writer, 0.0, seen), forward(up_reader, client_writer, delay)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    log = open(sys.argv[4], "a", buffering=1) if len(sys.argv) > 4 else None  # noqa: SIM115 - line-buffered: read while running
    try:
        asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), log))
    finally:
        if log is not None:
            log.close()
