"""Vertex AI batch prediction (Gemini models on Google Cloud): backend, wire format, credentials
and Cloud Storage. google-auth and gcsfs come with the ``[vertex]`` extra and are imported only
when a backend is built."""

from __future__ import annotations

from batch_provider.backends.vertex.backend import VertexBackend

__all__ = ["VertexBackend"]
