"""The providers the emulator serves. Each provider package (``emulator/<provider>/``) joins here on
import with the function that attaches its state to a :class:`~.store.Store` and its HTTP routes;
the app builds itself from what joined.

Invariants:
- Shared machinery (store, app, control) never imports a provider package's modules to learn
  what it serves: providers point at the shared modules, not the other way round.
- A provider joins once; joining again under the same name replaces its entry (module reloads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from .store import Store


@dataclass(frozen=True)
class ProviderFace:
    name: str
    attach: Callable[[Store], Any]
    routes: Sequence[BaseRoute]


_JOINED: dict[str, ProviderFace] = {}


def join(name: str, attach: Callable[[Store], Any], routes: Sequence[BaseRoute]) -> None:
    """Register provider ``name``: ``attach(store)`` creates its state on ``store.<name>``."""
    _JOINED[name] = ProviderFace(name, attach, routes)


def joined() -> tuple[ProviderFace, ...]:
    """The providers that joined, in the order they joined."""
    return tuple(_JOINED.values())
