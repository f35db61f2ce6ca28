"""Run-time knobs of a provider face (``GET|POST /_emu/<face>``), as a dataclass mixin (the
Bedrock, Gemini and Vertex faces' settings).

Invariants:
- :meth:`FaceSettings.update` changes nothing unless every name is a field; a value is converted
  to the type of the field's current value (``"true"``/``"1"``/``"yes"``/``"on"`` for booleans),
  and a field that is None takes the value as given.
- :meth:`FaceSettings.restore_defaults` (``/_emu/reset``) resets every field except those named
  in ``KEEP`` (endpoints found at start, which a reset must not lose).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


def _converted(current: Any, value: Any) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
    return type(current)(value)


class FaceSettings:
    """Mixin for a ``@dataclass`` of one face's settings."""

    FACE: ClassVar[str] = "face"
    KEEP: ClassVar[tuple[str, ...]] = ()

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {self.FACE} setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        converted = {name: _converted(getattr(self, name), value) for name, value in values.items()}
        for name, value in converted.items():
            setattr(self, name, value)

    def restore_defaults(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in self.KEEP:
                setattr(self, f.name, f.default)
