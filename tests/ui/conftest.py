"""Fixtures of the "LLM batches" page tests (defined in ``ui_server``, which tests import from)."""

from ui_server import api_server

__all__ = ["api_server"]
