"""Prompt caching, reported the way each provider reports it, deterministically per batch.

A :class:`PromptCache` lives for one rendering of one batch's results, which walks the requests in
one fixed order (input order, or the seeded shuffle). The first request carrying a given cacheable
prefix *writes* it, every later one in the same batch *reads* it. Prefixes under
``MIN_CACHEABLE_TOKENS`` are not cached, as the services silently do not cache short prompts.

What the prefix is, and how it is reported:

- Anthropic Messages (also Anthropic models on Bedrock): everything up to the last block carrying
  ``cache_control`` (``tools``, then ``system``, then messages). ``cache_creation_input_tokens`` on
  a write, ``cache_read_input_tokens`` on a read; ``input_tokens`` counts only the rest.
- OpenAI (implicit caching, no write charge): the leading ``system``/``developer`` messages, or
  ``instructions`` on ``/v1/responses``. A read reports ``prompt_tokens_details.cached_tokens``
  (``input_tokens_details.cached_tokens``), 1024 plus whole 128-token steps; ``prompt_tokens``
  still includes them.
- Gemini (implicit caching): ``systemInstruction``. A read reports
  ``usageMetadata.cachedContentTokenCount``, included in ``promptTokenCount``.
- Bedrock Converse: the ``system`` blocks before a ``cachePoint`` block. ``cacheWriteInputTokens``
  / ``cacheReadInputTokens``; ``inputTokens`` counts only the rest.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .outputs import _content_text, count_tokens

MIN_CACHEABLE_TOKENS = 1024
OPENAI_CACHE_STEP = 128


class PromptCache:
    """Which cacheable prefixes one batch has written so far."""

    def __init__(self) -> None:
        self._written: set[bytes] = set()

    def use(self, prefix: str) -> tuple[int, int]:
        """``(write tokens, read tokens)`` of a request whose cacheable prefix is ``prefix``."""
        if not prefix:
            return 0, 0
        tokens = count_tokens(prefix)
        if tokens < MIN_CACHEABLE_TOKENS:
            return 0, 0
        key = hashlib.blake2b(prefix.encode(), digest_size=16).digest()
        if key in self._written:
            return 0, tokens
        self._written.add(key)
        return tokens, 0

    def read_only(self, prefix: str) -> int:
        """Tokens read from the cache (implicit caching: a write is not reported)."""
        return self.use(prefix)[1]


def _marked(block: Any) -> bool:
    return isinstance(block, dict) and isinstance(block.get("cache_control"), dict)


def anthropic_prefix(params: dict[str, Any]) -> str:
    """The text up to the last ``cache_control`` breakpoint of Messages ``params`` ("" if none)."""
    pieces: list[str] = []
    prefix = ""
    for tool in params.get("tools") or []:
        pieces.append(str(tool))
        if _marked(tool):
            prefix = "\n".join(pieces)
    system = params.get("system")
    for block in system if isinstance(system, list) else []:
        pieces.append(_content_text([block]))
        if _marked(block):
            prefix = "\n".join(pieces)
    for message in params.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            pieces.append(_content_text([block]))
            if _marked(block):
                prefix = "\n".join(pieces)
    return prefix


def openai_prefix(body: dict[str, Any]) -> str:
    """The leading system/developer messages (chat) or the instructions (responses)."""
    if isinstance(body.get("instructions"), str):
        return body["instructions"]
    pieces: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        pieces.append(_content_text(message.get("content")))
    return "\n".join(pieces)


def openai_cached_tokens(cache: PromptCache | None, body: dict[str, Any]) -> int:
    """``cached_tokens`` of an OpenAI request: 1024 plus whole 128-token steps of a read prefix."""
    if cache is None:
        return 0
    read = cache.read_only(openai_prefix(body))
    return read - (read - MIN_CACHEABLE_TOKENS) % OPENAI_CACHE_STEP if read else 0


def gemini_prefix(request: dict[str, Any]) -> str:
    parts = (request.get("systemInstruction") or {}).get("parts")
    return _content_text(parts) if isinstance(parts, list) else ""


def converse_prefix(body: dict[str, Any]) -> str:
    """The Converse ``system`` text before its last ``cachePoint`` block ("" if none)."""
    pieces: list[str] = []
    prefix = ""
    for block in body.get("system") or []:
        if isinstance(block, dict) and "cachePoint" in block:
            prefix = "\n".join(pieces)
        elif isinstance(block, dict):
            pieces.append(str(block.get("text") or ""))
    return prefix


# ----------------------------------------------------------------------------- usage, per provider


def anthropic_usage(cache: PromptCache | None, params: dict[str, Any], usage: dict[str, Any]) -> None:
    """Fill the cache fields of a Messages ``usage`` (in place); ``input_tokens`` keeps the rest."""
    if cache is None:
        return
    write, read = cache.use(anthropic_prefix(params))
    usage["input_tokens"] = max(0, int(usage["input_tokens"]) - write - read)
    usage["cache_creation_input_tokens"] = write
    usage["cache_read_input_tokens"] = read


def openai_usage(
    cache: PromptCache | None, endpoint: str, body: dict[str, Any], response: dict[str, Any]
) -> None:
    """Fill ``cached_tokens`` of a chat or responses body's usage (in place)."""
    usage = response.get("usage")
    if cache is None or not isinstance(usage, dict) or endpoint == "/v1/embeddings":
        return
    cached = openai_cached_tokens(cache, body)
    name = "input_tokens_details" if endpoint == "/v1/responses" else "prompt_tokens_details"
    details = usage.get(name)
    if isinstance(details, dict):
        details["cached_tokens"] = cached


def gemini_usage(cache: PromptCache | None, request: dict[str, Any], usage: dict[str, Any]) -> None:
    """Set ``cachedContentTokenCount`` (left out when nothing was read, as Gemini does)."""
    if cache is None or request.get("cachedContent"):
        return
    read = cache.read_only(gemini_prefix(request))
    if read:
        usage["cachedContentTokenCount"] = read


def converse_usage(cache: PromptCache | None, body: dict[str, Any], usage: dict[str, Any]) -> None:
    """Fill ``cacheWriteInputTokens`` / ``cacheReadInputTokens`` of a Converse ``usage`` (in place)."""
    if cache is None:
        return
    write, read = cache.use(converse_prefix(body))
    if not (write or read):
        return
    usage["inputTokens"] = max(0, int(usage["inputTokens"]) - write - read)
    usage["cacheWriteInputTokens"] = write
    usage["cacheReadInputTokens"] = read
    usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"] + write + read
