"""Airflow templating of the batch operators' arguments, without connections and without data.

Invariants:
- No templated argument of a batch task can read a connection: while the task's fields are
  rendered, ``conn`` in the Jinja context raises :class:`ConnectionInTemplateError` (the task fails
  without retry, naming the fix). Anything a template renders may end up in a request, a batch's
  tags or a file, and secrets must reach none of them.
- Fields listed in ``literal_fields`` (input data such as ``records``) are never rendered when
  they hold a value: ``{{ … }}`` inside data stays as written. A reference to another task's
  output (an ``XComArg``, which has ``resolve``) is still resolved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from airflow.sdk.exceptions import AirflowFailException


class ConnectionInTemplateError(AirflowFailException):
    """A templated argument of a batch task tried to read an Airflow connection."""


class _NoConnections:
    """Stands for ``conn`` in the Jinja context of batch tasks: every access fails clearly."""

    def _refuse(self, name: str = "") -> NoReturn:
        target = f"conn.{name}" if name else "conn"
        raise ConnectionInTemplateError(
            f"a templated argument of this batch task reads {target}: connections are not available "
            "to the batch operators' templates, so that no secret can reach a request, a batch's "
            "tags, a log or a file. Pass conn_id instead and let the hook read the connection."
        )

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        self._refuse(name)

    def __getitem__(self, name: str) -> NoReturn:
        self._refuse(str(name))

    def get(self, name: str, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse(name)

    def __repr__(self) -> str:
        return "<connections are not available to batch task templates>"


def _is_reference(value: Any) -> bool:
    """An XComArg or other lazily resolved value (not data to be kept as written)."""
    return not isinstance(value, (str, bytes, list, tuple, dict, set)) and callable(
        getattr(value, "resolve", None)
    )


class NoSecretTemplating:
    """Mixin for batch operators and sensors (before ``BaseOperator`` in the bases)."""

    literal_fields: Sequence[str] = ()

    def _do_render_template_fields(
        self,
        parent: Any,
        template_fields: Iterable[str],
        context: Any,
        jinja_env: Any,
        seen_oids: set[int],
    ) -> None:
        if parent is self:
            context = dict(context)
            context["conn"] = _NoConnections()
            kept = {f for f in self.literal_fields if not _is_reference(getattr(self, f, None))}
            template_fields = [f for f in template_fields if f not in kept]
        super()._do_render_template_fields(  # type: ignore[misc]
            parent, template_fields, context, jinja_env, seen_oids
        )
