"""Prompt templates that need no Jinja context: text and bare ``{{ name }}`` outputs only.

Invariant: a :class:`PlainTemplate` renders a row to the text Jinja would render for it, or
raises so that the caller renders the row with Jinja (see :mod:`batch_provider.core.render`).
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2 import nodes

_SPECIAL_NAMES = frozenset({"self", "super", "loop", "caller", "varargs", "kwargs"})
"""Names Jinja's compiled code binds itself instead of reading them from the context."""


class PlainTemplate:
    """A template that is text and bare ``{{ name }}`` outputs only, rendered by substitution.

    Built by :meth:`of` from Jinja's parse of the source, never from the source text: the text
    pieces are the ``TemplateData`` Jinja's lexer produced (newlines normalised, the trailing
    newline dropped, whitespace control and comments applied, raw blocks unwrapped), and each name
    becomes ``str(value)``, as the code Jinja compiles for ``{{ name }}`` writes it when the
    environment has no ``finalize`` and no autoescape. :meth:`render` raises ``KeyError`` for a
    name the values lack; the caller then renders with Jinja, which decides what that means
    (a global, or an undefined name).
    """

    __slots__ = ("_parts", "_slots", "text")

    def __init__(self, parts: list[str | nodes.Name]) -> None:
        self._parts = [part if isinstance(part, str) else "" for part in parts]
        self._slots = [(index, part.name) for index, part in enumerate(parts) if not isinstance(part, str)]
        self.text = "".join(self._parts) if not self._slots else None
        """The rendered text when the template reads no name."""

    @classmethod
    def of(cls, env: jinja2.Environment, source: str) -> PlainTemplate | None:
        """The plain form of ``source`` in ``env``, or None when Jinja must render it."""
        if env.finalize is not None or env.autoescape is not False or env.extensions or env.is_async:
            return None
        parts: list[str | nodes.Name] = []
        for node in env.parse(source).body:
            if type(node) is not nodes.Output:
                return None
            for child in node.nodes:
                if type(child) is nodes.TemplateData:
                    parts.append(child.data)
                elif type(child) is nodes.Name and child.ctx == "load" and child.name not in _SPECIAL_NAMES:
                    parts.append(child)
                else:
                    return None
        return cls(parts)

    def render(self, values: dict[str, Any]) -> str:
        if self.text is not None:
            return self.text
        parts = self._parts.copy()
        for index, name in self._slots:
            parts[index] = str(values[name])
        return "".join(parts)


__all__ = ["PlainTemplate"]
