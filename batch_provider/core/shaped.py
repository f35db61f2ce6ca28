"""Rows of one shape: requests that differ from each other only in their custom_id and one text.

Prompt strings handed to ``@task.batch_llm``, and any rows taken as requests of the form
``{"messages": [{"role": "user", "content": text}]}`` (with or without the same ``"system"``
string), render to requests that differ only in their custom_id and that one text. For the rows
of such a shape after its first, the builder gives a :class:`ShapedRequest`: the row, its number,
custom_id and text, and the shape. The request's byte forms (its input-fingerprint line, the
JSON its cache key hashes, its native line under a wire id) are then made by putting the
custom_id, wire id and text into templates of those bytes, without a validated ``LLMRequest``.

Invariants:
- A :class:`ShapedRequest` stands for exactly the request the builder makes of its row by the
  general path (:meth:`ShapedRequest.request`); every byte form a template makes is the byte form
  of that request, and every check (model, context window, request size) gives the same answer.
- A template is made from the general path's own bytes for two placeholder pairs (ids, and texts
  of two lengths holding characters JSON escapes): each placeholder must appear exactly once, and
  the template filled with the second pair must give the general path's bytes for it. Otherwise
  the shape has no such template, and its requests go the general path.
- A text goes into a template as the encoder of those bytes writes any string (pydantic for the
  fingerprint line, ``json`` for the cache key, msgspec for native lines); JSON escapes a string
  character by character, so its bytes do not depend on where it stands.
- Only requests whose input tokens the plain-text count gives (a string system prompt and string
  messages, no body, ``extra``, input or schema) are shaped, so their token count is the system
  prompt's characters plus the text's. An empty text, a text an encoder refuses, and a request
  over its model's context window or the provider's size limit go the general path, which
  rejects or raises exactly as it would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

import msgspec
import pydantic_core

from batch_provider.core.contract import EncodedRequest
from batch_provider.core.models import LLMRequest, RejectedRow
from batch_provider.core.tokens import plain_text_chars, text_tokens

MAX_SHAPES = 8
"""Shapes a builder keeps (one per system prompt): rows beyond them go the general path."""

_MESSAGE_KEYS = frozenset({"role", "content"})
_ROW_KEYS = (frozenset({"messages"}), frozenset({"messages", "system"}))

_IDS = ("bp-shaped-id-a", "bp-shaped-id-bbbbbbb")
_TEXTS = (
    'bp-shaped-text-a "quoted" \\ back\nslash\t\x01\x1f\x7f é \u2028 \U0001f600 </tag>',
    "bp-shaped-text-bb \x00 \r\n \u00ff \u2029 \ufeff \U0010ffff 'single' \"double\" \\\\ end",
)

_encode_text = msgspec.json.Encoder().encode
_encode_key_text = encode_basestring  # what ``json.dumps(text, ensure_ascii=False)`` returns

Build = Callable[[str, str], bytes]
"""Bytes of the general path for (an id, a text)."""
Fill = Callable[[bytes, bytes], bytes]
"""Bytes of a template for (an encoded id, an encoded text)."""
Make = Callable[[str, str], LLMRequest]
"""The general path's request for (a custom_id, a text)."""


def row_form(row: Any) -> tuple[tuple[frozenset[str], str | None], str] | None:
    """(shape key, text) of a row of the form the module describes, else None."""
    if type(row) is not dict:
        return None
    keys = row.keys()
    if keys == _ROW_KEYS[1]:
        system = row["system"]
        if type(system) is not str:
            return None
        shape_key = (_ROW_KEYS[1], system)
    elif keys == _ROW_KEYS[0]:
        shape_key = (_ROW_KEYS[0], None)
    else:
        return None
    messages = row["messages"]
    if type(messages) is not list or len(messages) != 1:
        return None
    message = messages[0]
    if type(message) is not dict or message.keys() != _MESSAGE_KEYS:
        return None
    role, text = message["role"], message["content"]
    if type(role) is not str or role != "user" or type(text) is not str or not text:
        return None
    return shape_key, text


def with_text(row: dict[str, Any], text: str) -> dict[str, Any]:
    """``row`` (of the form :func:`row_form` reads) with ``text`` as its message."""
    return {**row, "messages": [{"role": "user", "content": text}]}


def _template(
    build: Build,
    encode_id: Callable[[str], bytes] | None,
    encode_text: Callable[[str], bytes],
    ids: tuple[str, str] = _IDS,
) -> Fill | None:
    """A filler of the bytes ``build`` makes, with an id slot (None: the bytes hold no id) and a
    text slot; None when the placeholders do not give one (see the module's invariants)."""
    try:
        made = build(ids[0], _TEXTS[0])
        slots = [(encode_text(_TEXTS[0]), "text")]
        if encode_id is not None:
            slots.append((encode_id(ids[0]), "id"))
    except Exception:  # a placeholder the general path refuses: that shape goes the general path
        return None
    found = []
    for placeholder, name in slots:
        if made.count(placeholder) != 1:
            return None
        start = made.index(placeholder)
        found.append((start, start + len(placeholder), name))
    found.sort()
    pieces: list[bytes] = []
    at = 0
    for start, end, _ in found:
        if start < at:
            return None
        pieces.append(made[at:start])
        at = end
    pieces.append(made[at:])
    order = tuple(name for _, _, name in found)
    fill = _filler(pieces, order)
    try:
        second = build(ids[1], _TEXTS[1])
        id_bytes = encode_id(ids[1]) if encode_id is not None else b""
        if fill(id_bytes, encode_text(_TEXTS[1])) != second:
            return None
    except Exception:
        return None
    return fill


def _filler(pieces: list[bytes], order: tuple[str, ...]) -> Fill:
    if order == ("text",):
        head, tail = pieces
        return lambda _id, text: head + text + tail
    head, mid, tail = pieces
    if order == ("id", "text"):
        return lambda id_, text: head + id_ + mid + text + tail
    return lambda id_, text: head + text + mid + id_ + tail


class NativeTemplate:
    """A shape's native line under a wire id, and what the splitter reads off an encoded line."""

    __slots__ = ("endpoint", "fill", "group", "max_bytes", "model", "wants_json")

    def __init__(self, fill: Fill, sample: EncodedRequest, wants_json: bool, max_bytes: int):
        self.fill = fill
        self.group = sample.group
        self.model = sample.model
        self.endpoint = sample.endpoint
        self.wants_json = wants_json
        self.max_bytes = max_bytes

    def line(self, wire: str, text: str) -> bytes | None:
        """The request's line under ``wire``; None when the general path must decide (a text the
        encoder refuses, a line over the provider's size limit)."""
        try:
            line = self.fill(_encode_text(wire), _encode_text(text))
        except Exception:
            return None
        return None if len(line) > self.max_bytes else line


class RequestShape:
    """The requests of rows that differ only in their text (see the module): ``make`` is the
    general path from (custom_id, text) to the request, ``reference`` the request of the shape's
    first row."""

    def __init__(self, make: Make, reference: LLMRequest, fingerprint: Fill):
        self._make = make
        self.reference = reference
        self._fingerprint = fingerprint
        self._system_chars = (plain_text_chars(reference) or 0) - len(reference.messages[0].content)
        self._key_fills: dict[str, Fill | None] = {}

    @classmethod
    def of(cls, make: Make, item: LLMRequest | RejectedRow) -> RequestShape | None:
        """The shape of the rows ``make`` turns into requests, ``item`` being the first one's
        general-path item; None when they have none."""
        if not isinstance(item, LLMRequest) or plain_text_chars(item) is None or len(item.messages) != 1:
            return None
        fill = _template(
            lambda custom_id, text: item_line(make(custom_id, text)),
            pydantic_core.to_json,
            pydantic_core.to_json,
        )
        return None if fill is None else cls(make, item, fill)

    def request(self, custom_id: str, text: str) -> LLMRequest:
        """The general path's request for ``text`` (no row number)."""
        return self._make(custom_id, text)

    def input_tokens(self, text: str) -> int:
        """Input tokens, as :func:`batch_provider.core.tokens.request_tokens` counts them."""
        return max(1, text_tokens(self._system_chars + len(text)))

    def fingerprint_line(self, custom_id: str, text: str) -> bytes:
        """The input-fingerprint line (newline included)."""
        return self._fingerprint(pydantic_core.to_json(custom_id), pydantic_core.to_json(text))

    def cache_key(self, provider: str, text: str) -> str | None:
        """The result-cache key of the request; None when the general path must make it."""
        fill = self._key_fills.get(provider, False)
        if fill is False:
            from batch_provider.core.cache import ResultCache

            fill = self._key_fills[provider] = _template(
                lambda _id, text: ResultCache.key_text(provider, self.request("row-0", text)).encode(),
                None,
                lambda text: _encode_key_text(text).encode(),
            )
        if fill is None:
            return None
        try:
            raw = fill(b"", _encode_key_text(text).encode())
        except Exception:
            return None
        return hashlib.sha256(raw).hexdigest()

    def native(
        self,
        encode_as: Callable[[LLMRequest, str], EncodedRequest],
        wire_ids: tuple[str, str],
        wants_json: Callable[[bytes], bool] | None,
        max_bytes: int,
    ) -> NativeTemplate | None:
        """The template of this shape's native lines made by ``encode_as`` under wire ids of the
        form of ``wire_ids`` (two of them, unused by the run); None when there is none."""
        sample: list[EncodedRequest] = []

        def line(wire: str, text: str) -> bytes:
            encoded = encode_as(self.request("row-0", text), wire)
            sample.append(encoded)
            return encoded.line

        fill = _template(line, _encode_text, _encode_text, ids=wire_ids)
        if fill is None:
            return None
        first = sample[0]
        if any((s.group, s.model, s.endpoint) != (first.group, first.model, first.endpoint) for s in sample):
            return None
        json_wanted = [wants_json is not None and wants_json(s.line) for s in sample]
        if json_wanted[0] != json_wanted[-1]:
            return None
        return NativeTemplate(fill, first, json_wanted[0], max_bytes)


class ShapedRequest:
    """A request of a :class:`RequestShape`: row number, custom_id and text (see the module)."""

    __slots__ = ("custom_id", "row", "shape", "text", "tokens")

    def __init__(self, custom_id: str, row: int, text: str, shape: RequestShape):
        self.custom_id = custom_id
        self.row = row
        self.text = text
        self.shape = shape
        self.tokens = 0
        """Its input tokens, once the intake counted them."""

    def request(self) -> LLMRequest:
        """The ``LLMRequest`` this stands for, as the general path makes it."""
        return self.shape.request(self.custom_id, self.text).at_row(self.row)

    def fingerprint_line(self) -> bytes:
        try:
            return self.shape.fingerprint_line(self.custom_id, self.text)
        except Exception:  # a text pydantic refuses: the general path raises as it would have
            return item_line(self.request())


def item_line(item: LLMRequest | RejectedRow | ShapedRequest) -> bytes:
    """An input item's line of the input fingerprint: ``model_dump_json(exclude_defaults=True)``
    and a newline."""
    if type(item) is ShapedRequest:
        return item.fingerprint_line()
    return item.__pydantic_serializer__.to_json(item, exclude_defaults=True) + b"\n"
