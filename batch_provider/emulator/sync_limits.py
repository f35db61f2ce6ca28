"""What every synchronous endpoint of the emulator shares: per-key rate limits, latency and counts.

The synchronous faces (OpenAI chat completions / responses / embeddings, Anthropic messages,
Gemini and Vertex AI generateContent, Bedrock Runtime InvokeModel and Converse) answer with exactly the body
and usage the batch outputs give for the same request body (they reuse the same generators);
this module decides whether a call is admitted and keeps the figures tests read back from
``GET /_emu/sync``.

Invariants:
- Limits are per API key (the bearer token, ``x-api-key`` or ``x-goog-api-key``; for Bedrock the
  SigV4 access key id, which its face passes) over a sliding window of ``window_seconds`` real
  seconds: at most ``rpm`` admitted calls and ``tpm`` tokens
  (input + output of the answers given). A call over either gets 429 with ``Retry-After`` (whole
  seconds, at least 1) and ``retry-after-ms``, and is not counted as served.
- ``served[body hash]`` counts every answered call per request body, so a test can tell a body
  answered twice; ``limited`` counts the 429s given.
- The ``invalid_output`` directive (a ``[[emu:invalidNN]]`` marker in the body, or the
  server-wide ``batch_faults``) makes a share of JSON answers invalid as in batches
  (:mod:`.invalid_answers`), drawn per (body, how many times that body was answered before): the
  same body sent again draws again, as a resubmission under a new custom_id does.
- ``latency_seconds`` is slept before each answer (the event loop stays free).
- Settings start from the :class:`~.config.EmulatorConfig` ``sync_*`` fields, change with
  ``POST /_emu/sync`` and go back to them on ``/_emu/reset``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import providers
from .faults import directive_id, parse_custom_id
from .invalid_answers import invalid_kind as _draw_invalid
from .outputs import body_hash

if TYPE_CHECKING:
    from starlette.requests import Request

    from .store import Store


@dataclass
class SyncSettings:
    """Knobs of the synchronous endpoints; change them at run time with ``POST /_emu/sync``."""

    rpm: int = 0
    tpm: int = 0
    window_seconds: float = 60.0
    latency_seconds: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown sync setting {name!r}; known: {', '.join(sorted(known))}")
            converted = type(getattr(self, name))(value)
            if converted < 0 or (name == "window_seconds" and converted <= 0):
                raise ValueError(f"sync setting {name!r} must be positive, got {value!r}")
            setattr(self, name, converted)


@dataclass
class _Window:
    calls: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)


class SyncFace:
    """Rate limits and counts of the synchronous endpoints, one per :class:`~.store.Store`."""

    PROVIDER = "sync"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.settings = self._defaults()
        self.records: dict[str, _Window] = {}
        """API key → its window (a ``Sized`` for the settings route's count)."""
        self.served: Counter[int] = Counter()
        self.limited = 0

    def _defaults(self) -> SyncSettings:
        c = self.store.config
        return SyncSettings(
            rpm=c.sync_rpm,
            tpm=c.sync_tpm,
            window_seconds=c.sync_window_seconds,
            latency_seconds=c.sync_latency_seconds,
        )

    def clear(self) -> None:
        self.settings = self._defaults()
        self.records.clear()
        self.served.clear()
        self.limited = 0

    def retry_after(self, key: str, tokens: int) -> float | None:
        """Seconds to wait before a call of ``key`` spending ``tokens`` fits; None: it fits now
        (and is counted)."""
        s = self.settings
        now = time.monotonic()
        window = self.records.setdefault(key, _Window())
        horizon = now - s.window_seconds
        while window.calls and window.calls[0] <= horizon:
            window.calls.popleft()
        while window.tokens and window.tokens[0][0] <= horizon:
            window.tokens.popleft()
        waits: list[float] = []
        if s.rpm and len(window.calls) >= s.rpm:
            waits.append(window.calls[len(window.calls) - s.rpm] - horizon)
        if s.tpm:
            spent = sum(n for _, n in window.tokens)
            if spent + tokens > s.tpm:
                if not window.tokens or tokens > s.tpm:
                    waits.append(s.window_seconds)  # never fits alone: wait a whole window
                else:
                    freed, wait = 0, 0.0
                    for at, n in window.tokens:
                        freed += n
                        wait = at - horizon
                        if spent - freed + tokens <= s.tpm:
                            break
                    waits.append(wait)
        if waits:
            self.limited += 1
            return max(waits)
        window.calls.append(now)
        window.tokens.append((now, tokens))
        return None

    def count(self, body: Any) -> None:
        self.served[body_hash(0, body)] += 1

    def snapshot(self, bodies: bool = False) -> dict[str, Any]:
        """Settings and counts; with ``bodies``, answers per body hash too (``served_by_body``,
        keyed by :func:`.outputs.body_hash` with seed 0 of the body, as text)."""
        extra = {"served_by_body": {str(h): n for h, n in self.served.items()}} if bodies else {}
        return {
            **extra,
            **dataclasses.asdict(self.settings),
            "served": sum(self.served.values()),
            "distinct_bodies": len(self.served),
            "max_per_body": max(self.served.values(), default=0),
            "limited": self.limited,
            "keys": len(self.records),
        }


def invalid_kind(store: Store, body: Any) -> str | None:
    """The kind of invalid answer this synchronous call's JSON answer gets, or None."""
    _, own = parse_custom_id(directive_id("", body))
    faults = store.faults.batch_defaults.merged(own)
    digest = body_hash(0, body)
    key = f"sync-{digest}-{attach(store).served[digest]}"
    return _draw_invalid(store.config.seed, key, faults)


def attach(store: Store) -> SyncFace:
    """The store's :class:`SyncFace`, created on first use; ``/_emu/reset`` clears it too."""
    existing = getattr(store, "sync", None)
    if isinstance(existing, SyncFace):
        return existing
    face = SyncFace(store)
    store.sync = face  # type: ignore[attr-defined]
    reset = store.reset

    def reset_and_clear() -> None:
        reset()
        face.clear()

    store.reset = reset_and_clear  # type: ignore[method-assign]
    return face


def api_key(request: Request) -> str:
    headers = request.headers
    bearer = headers.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip()
    return (
        headers.get("x-api-key") or headers.get("x-goog-api-key") or request.query_params.get("key") or ""
    ).strip()


def retry_headers(wait: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, int(wait * 1000)))}


async def admit(request: Request, tokens: int, key: str | None = None) -> float | None:
    """None when the call of this request's key (``key``, else :func:`api_key`), spending
    ``tokens``, is admitted (after the configured latency); else the seconds to wait (the caller
    answers 429)."""
    face = attach(request.app.state.store)
    wait = face.retry_after(api_key(request) if key is None else key, tokens)
    if wait is None and face.settings.latency_seconds:
        await asyncio.sleep(face.settings.latency_seconds)
    return wait


def control_route() -> Any:
    """``GET /_emu/sync``: settings and counts; ``POST /_emu/sync`` with a JSON object changes the
    settings first (400 and nothing changed on a bad value)."""
    import json

    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> Any:
        face = attach(request.app.state.store)
        if request.method == "POST":
            try:
                values = json.loads(await request.body() or b"{}")
                if not isinstance(values, dict):
                    raise ValueError("expected a JSON object")
                trial = dataclasses.replace(face.settings)
                trial.update(values)
                face.settings = trial
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return JSONResponse(face.snapshot(bodies=request.query_params.get("bodies") == "1"))

    return Route("/_emu/sync", endpoint, methods=["GET", "POST"], name="settings /_emu/sync")


providers.join("sync", attach, [control_route()])
