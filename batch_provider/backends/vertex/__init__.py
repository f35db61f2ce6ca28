"""Vertex AI batch prediction (Gemini models on Google Cloud): client (``backend``), wire
translation (``wire``), credentials (``auth``), Cloud Storage (``storage``) and connection options
(``connection``). google-auth and gcsfs come with the ``[vertex]`` extra and are imported only when
a backend is built; the backend class loads on first use, so importing a sibling module (e.g.
``connection``, as the hooks do) does not load the client."""

from __future__ import annotations

from typing import Any

__all__ = ["VertexBackend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
