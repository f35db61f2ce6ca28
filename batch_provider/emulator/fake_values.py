"""Deterministic fake values the emulated models write: prose and JSON valid against a schema.

Every value is drawn from the ``random.Random`` it is given, so it depends only on that generator's
state (callers seed it with :func:`.outputs.body_hash` of the request).

Invariants:
- :func:`fake_text` is at most ``max_tokens`` tokens (chars/4 rule) of words from one fixed
  vocabulary; it draws exactly what ``rng.choice`` over that vocabulary would.
- :func:`instance_for_schema` returns JSON valid against the (simple) JSON schema it is given:
  objects, strings with enum/format/length, numbers and integers with bounds, booleans, arrays
  with item counts, ``$ref``/``$defs``, ``anyOf``/``oneOf``/``allOf``, nullable types.
- :func:`schema_in_text` finds a JSON Schema object written in a prompt with a bounded scan.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

_VOCABULARY = (
    "the model reviewed input and found clear signal with modest noise overall result is "
    "positive negative neutral summary notes that key points include data quality timing scope risk "
    "value customer request response shows strong evidence for this label given context above"
)
_WORDS = tuple(_VOCABULARY.split())
_WORD_BITS = len(_WORDS).bit_length()


def fake_text(rng: random.Random, max_tokens: int) -> str:
    """A sentence of 6 to 45 tokens' worth of vocabulary words, cut to ``max_tokens`` when fewer."""
    target = max(1, min(max_tokens, 6 + rng.randrange(40)))
    limit = target * 4
    words: list[str] = []
    length = 0
    # ``rng.choice(_WORDS)`` inlined (same draws: CPython's choice is _randbelow by getrandbits).
    getrandbits, n, bits = rng.getrandbits, len(_WORDS), _WORD_BITS
    while length < limit - 8:
        r = getrandbits(bits)
        while r >= n:
            r = getrandbits(bits)
        w = _WORDS[r]
        words.append(w)
        length += len(w) + 1
    text = " ".join(words)[:limit].strip()
    text = (text[:1].upper() + text[1:] + ".") if len(text) + 1 <= limit else text[:limit]
    return text or "ok"


def instance_for_schema(schema: Any, rng: random.Random, root: Any = None, depth: int = 0) -> Any:
    """A JSON value valid against the (simple) JSON schema ``schema``."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None if depth > 12 else "value"
    if "$ref" in schema:
        return instance_for_schema(_resolve_ref(root, schema["$ref"]), rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return instance_for_schema((non_null or options)[0], rng, root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged = {
                    **merged,
                    **part,
                    "properties": {**merged.get("properties", {}), **part.get("properties", {})},
                }
        return instance_for_schema(merged, rng, root, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if non_null else "null"
    if typ is None:
        typ = "object" if "properties" in schema else ("array" if "items" in schema else "string")
    if typ == "object":
        props = schema.get("properties") or {}
        return {k: instance_for_schema(v, rng, root, depth + 1) for k, v in props.items()}
    if typ == "array":
        lo = min(int(schema.get("minItems", 1)), 1000)
        hi = int(schema.get("maxItems", max(lo, 3)))
        n = rng.randint(lo, max(lo, min(hi, lo + 2)))
        return [instance_for_schema(schema.get("items", {}), rng, root, depth + 1) for _ in range(n)]
    if typ == "integer":
        lo, hi = _bounds(schema, 0, 100)
        return rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi)))
    if typ == "number":
        lo, hi = _bounds(schema, 0.0, 1.0)
        return round(lo + (hi - lo) * rng.random(), 3) if hi > lo else lo
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "null":
        return None
    return _fake_string(schema, rng)


def _bounds(schema: dict[str, Any], lo: float, hi: float) -> tuple[float, float]:
    step = 1 if schema.get("type") == "integer" else 1e-3
    if "minimum" in schema:
        lo = float(schema["minimum"])
    elif "exclusiveMinimum" in schema:
        lo = float(schema["exclusiveMinimum"]) + step
    if "maximum" in schema:
        hi = float(schema["maximum"])
    elif "exclusiveMaximum" in schema:
        hi = float(schema["exclusiveMaximum"]) - step
    return lo, max(lo, hi)


def _fake_string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
    if fmt == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "email":
        return f"user{rng.randrange(1000)}@example.com"
    if fmt == "uuid":
        return f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
    if fmt in ("uri", "url"):
        return f"https://example.com/{rng.randrange(1000)}"
    lo = min(int(schema.get("minLength", 0)), 100_000)
    hi = int(schema.get("maxLength", 10_000))
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    if len(words) < lo:
        words = (words + " ") * (lo // (len(words) + 1) + 1)
    return words[:hi] if hi >= lo else words[:lo]


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def _looks_like_schema(obj: Any) -> bool:
    return isinstance(obj, dict) and (
        isinstance(obj.get("properties"), dict)
        or (obj.get("type") in ("object", "array") and "$schema" in obj)
    )


def schema_in_text(text: str) -> dict[str, Any] | None:
    """The first JSON Schema object written in a prompt, if any (bounded scan)."""
    if "{" not in text or "properties" not in text:
        return None
    decoder = json.JSONDecoder()
    start, tries = text.find("{"), 0
    while start != -1 and tries < 64 and start < 500_000:
        tries += 1
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for cand in (obj, obj.get("schema"), obj.get("json_schema")):
                if _looks_like_schema(cand):
                    return cand
                if isinstance(cand, dict) and _looks_like_schema(cand.get("schema")):
                    return cand["schema"]
        start = text.find("{", start + 1)
    return None


def _render(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_text(schema: dict[str, Any] | None, rng: random.Random) -> str:
    """Compact JSON text: an instance of ``schema``, or a small ``{"result", "score"}`` object without one."""
    if schema:
        return _render(instance_for_schema(schema, rng))
    return _render({"result": fake_text(rng, 12), "score": round(rng.random(), 3)})
