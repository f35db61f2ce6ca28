"""How many input tokens a request carries, counted before anything is sent.

Every part of the request that reaches the model is counted: the system prompt (text or blocks),
messages, embedding input, the response schema, and whatever ``extra`` and a ``native`` body
(a ``build_request`` body included) add: tools, system blocks, extra messages. Text is counted at
about four characters a token (the rule of thumb for BPE tokenizers on English text); images by
each provider's rule (:func:`image_tokens`).

Invariants:
- Text marked for prompt caching (a block carrying Anthropic ``cache_control``, and everything
  counted before it, as Anthropic caches the prefix up to the marked block) is counted in
  ``cacheable`` as well as in ``input``: ``cacheable <= input``. ``native`` and ``extra`` are
  walked first, as the tools and system blocks they carry open the prompt.
- An image whose size cannot be read from its bytes (a URL, an unknown format) is counted at the
  provider's largest per-image figure, so the estimate errs high, never low.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from batch_provider.core.models import ImagePart, LLMRequest, Provider

CHARS_PER_TOKEN = 4
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_IMAGE_KEYS = ("inline_data", "inlineData", "file_data", "fileData", "image_url")
_SKIPPED_KEYS = frozenset(
    {"cache_control", "model", "max_tokens", "max_completion_tokens", "max_output_tokens"}
)
"""Options of a body that do not reach the model as text."""


@dataclass
class TokenCount:
    input: int = 0
    cacheable: int = 0
    """Of ``input``, tokens in a prefix the request marks for prompt caching."""


def text_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def image_size(data: str | None) -> tuple[int, int] | None:
    """(width, height) of a base64 PNG, GIF or JPEG, read from its header; None when unknown."""
    if not data:
        return None
    try:
        head = base64.b64decode(data[:65536] + "=" * (-len(data[:65536]) % 4), validate=False)
    except ValueError:
        return None
    if head.startswith(b"\x89PNG") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker, length = head[i + 1], struct.unpack(">H", head[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", head[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


def image_tokens(provider: Provider, size: tuple[int, int] | None) -> int:
    """Input tokens of one image under the provider's published rule."""
    if provider in (Provider.OPENAI, Provider.OPENAI_COMPATIBLE):
        # High detail: fit in 2048², shortest side to 768, 170 per 512² tile plus 85.
        if size is None:
            return 85 + 170 * 8
        width, height = size
        scale = min(1.0, 2048 / max(width, height))
        width, height = width * scale, height * scale
        scale = min(1.0, 768 / min(width, height))
        width, height = width * scale, height * scale
        return 85 + 170 * (-(-int(width) // 512)) * (-(-int(height) // 512))
    if provider in (Provider.GEMINI, Provider.VERTEX):
        # 258 per image up to 384 px a side; larger ones are cut into 768 × 768 tiles of 258.
        if size is None:
            return 258 * 6
        width, height = size
        if width <= 384 and height <= 384:
            return 258
        return 258 * (-(-width // 768)) * (-(-height // 768))
    # Anthropic and Claude on Bedrock: width × height / 750, images resized to ~1.15 megapixels.
    if size is None:
        return 1600
    width, height = size
    return min(1600, max(1, width * height // 750))


class _Walker:
    """Sums the text characters and images of a JSON-like body."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.chars = 0
        self.image_tokens = 0
        self.cacheable_tokens = 0

    @property
    def tokens(self) -> int:
        return text_tokens(self.chars) + self.image_tokens

    def walk(self, value: Any) -> None:
        if isinstance(value, str):
            self.chars += len(value)
        elif isinstance(value, dict):
            if _is_image(value):
                self.image_tokens += image_tokens(self.provider, image_size(_image_data(value)))
                return
            for key, item in value.items():
                if key in _SKIPPED_KEYS:
                    continue
                self.chars += len(key)
                self.walk(item)
            if "cache_control" in value:
                self.cacheable_tokens = self.tokens
        elif isinstance(value, list):
            for item in value:
                self.walk(item)
        elif value is not None:
            self.chars += len(str(value))


def _is_image(value: dict[str, Any]) -> bool:
    if value.get("type") in _IMAGE_TYPES:
        return True
    return any(key in value for key in _IMAGE_KEYS[:4]) and "text" not in value


def _image_data(value: dict[str, Any]) -> str | None:
    for holder in (value.get("source"), value.get("inline_data"), value.get("inlineData"), value):
        if isinstance(holder, dict) and isinstance(holder.get("data"), str):
            return holder["data"]
    url = value.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if isinstance(url, str) and url.startswith("data:") and "," in url:
        return url.split(",", 1)[1]
    return None


def plain_text_chars(request: LLMRequest) -> int | None:
    """Characters of a request that is text only (a string system prompt, string messages, no
    body, ``extra``, input or schema), which is what the walk counts for it; else None."""
    if request.native is not None or request.extra or request.input is not None:
        return None
    if request.response_schema is not None:
        return None
    system = request.system
    if system is not None and type(system) is not str:
        return None
    chars = len(system) if system else 0
    for message in request.messages:
        content = message.content
        if type(content) is not str:
            return None
        chars += len(content)
    return chars


def request_tokens(provider: Provider, request: LLMRequest) -> TokenCount:
    """Input tokens of ``request`` as the provider will count them, approximately."""
    chars = plain_text_chars(request)
    if chars is not None:
        return TokenCount(input=max(1, text_tokens(chars)))
    walker = _Walker(provider)
    # Bodies first: their tools and system blocks open the prompt, where a cached prefix lies.
    # A key of ``extra`` that replaces one of the body is counted twice: the estimate errs high.
    if request.native is not None:
        walker.walk(request.native)
    if request.extra:
        walker.walk(request.extra)
    if request.system:
        walker.walk(request.system)
    for message in request.messages:
        if isinstance(message.content, str):
            walker.walk(message.content)
            continue
        for part in message.content:
            if isinstance(part, ImagePart):
                walker.image_tokens += image_tokens(provider, image_size(part.data))
            else:
                walker.walk(part.text)
    if request.input is not None:
        walker.walk(request.input)
    if request.response_schema is not None:
        walker.chars += len(json.dumps(request.response_schema))
    total = max(1, walker.tokens)
    return TokenCount(input=total, cacheable=min(walker.cacheable_tokens, total))
