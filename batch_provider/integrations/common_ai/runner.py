"""Run our async backends from common-ai's synchronous adapter calls.

common-ai calls an adapter from a worker's main thread (the operator) and from
``asyncio.to_thread`` workers (its trigger), never twice at once on one adapter. A backend's HTTP
pool belongs to the event loop that made it, so each adapter owns one private loop on one daemon
thread and sends every coroutine there; the calling thread only waits for the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

PAGE = 2048
"""Records fetched from the loop per hop when a result stream is read synchronously."""


class LoopThread:
    """One event loop on one daemon thread, started on first use and stopped by :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self._started()).result()

    def iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """A synchronous iterator over ``stream``, pulling :data:`PAGE` items per hop so memory
        stays bounded by the page, not by the stream."""

        async def page() -> list[T]:
            items: list[T] = []
            async for item in stream:
                items.append(item)
                if len(items) >= PAGE:
                    break
            return items

        while True:
            items = self.run(page())
            yield from items
            if len(items) < PAGE:
                return

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
