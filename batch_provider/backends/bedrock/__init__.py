"""The Bedrock backend: client (``backend``) and wire translation (``wire``). The backend class loads
on first use, so importing a sibling module (e.g. ``wire``) does not load the client."""

from __future__ import annotations

from typing import Any

__all__ = ["BedrockBackend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
