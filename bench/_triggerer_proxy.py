"""A TCP proxy that adds API latency: every chunk the upstream sends back is delivered ``delay``
seconds after it arrived (order kept), so each HTTP response comes ``delay`` later.

    python bench/_triggerer_proxy.py UPSTREAM_PORT DELAY_SECONDS PORT_FILE

Listens on 127.0.0.1 (a free port, written to PORT_FILE) and forwards to 127.0.0.1:UPSTREAM_PORT.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
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


async def main(upstream_port: int, delay: float, port_file: Path) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(forward(client_reader, up_writer, 0.0), forward(up_reader, client_writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])))
