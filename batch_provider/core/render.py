"""Turn input rows into :class:`LLMRequest` objects: a Jinja prompt template, a callable, or rows
that already are requests.

Invariants:
- One row in, one item out: an ``LLMRequest`` or a ``RejectedRow`` naming the row, the field and
  what to do. A template that references a column the row lacks rejects that row only.
- Rendering is deterministic, so a rerun of the same rows yields byte-identical requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from batch_provider.core.models import LLMRequest, Message, RejectedRow, RequestKind

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)

Item = LLMRequest | RejectedRow


def _first_error(exc: ValidationError) -> tuple[str | None, str]:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error.get("loc", ())) or None
    return field, error.get("msg", str(exc))


class RequestBuilder:
    """Builds requests from rows with defaults the rows do not override.

    ``id_field``: the column holding each row's custom_id. ``None`` means: ``custom_id`` or ``id``
    when the row has one, else ``row-<n>`` from the row number.
    """

    def __init__(
        self,
        *,
        template: str | None = None,
        build: Callable[[dict[str, Any]], LLMRequest | dict[str, Any]] | None = None,
        system: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        id_field: str | None = None,
        response_schema: dict[str, Any] | None = None,
        kind: RequestKind | str = RequestKind.CHAT,
        extra: dict[str, Any] | None = None,
    ):
        if template is not None and build is not None:
            raise ValueError("give either a prompt template or a build callable, not both")
        self._template = _ENV.from_string(template) if template is not None else None
        self._build = build
        self._system_template = _ENV.from_string(system) if system else None
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.id_field = id_field
        self.response_schema = response_schema
        self.kind = RequestKind(kind)
        self.extra = dict(extra or {})

    def render(self, rows: Iterable[tuple[int, dict[str, Any] | RejectedRow]]) -> Iterator[Item]:
        for number, row in rows:
            if isinstance(row, RejectedRow):
                yield row
                continue
            yield self.render_row(number, row)

    def custom_id(self, number: int, row: dict[str, Any]) -> str | RejectedRow:
        if self.id_field is not None:
            value = row.get(self.id_field)
            if value is None or str(value) == "":
                return RejectedRow(
                    row=number,
                    field=self.id_field,
                    reason=f"row {number} has no value in id column {self.id_field!r}; "
                    "fill it or choose another id_field",
                )
            return str(value)
        for key in ("custom_id", "id"):
            if row.get(key) not in (None, ""):
                return str(row[key])
        return f"row-{number}"

    def render_row(self, number: int, row: dict[str, Any]) -> Item:
        custom_id = self.custom_id(number, row)
        if isinstance(custom_id, RejectedRow):
            return custom_id
        try:
            if self._build is not None:
                item = self._from_callable(number, custom_id, row)
            elif self._template is not None:
                item = self._from_template(custom_id, row)
            else:
                item = self._from_request_row(custom_id, row)
        except jinja2.UndefinedError as exc:
            return RejectedRow(
                row=number,
                custom_id=custom_id,
                field="prompt_template",
                reason=f"row {number}: the template uses {exc.message}; "
                "add that column or change the template",
            )
        except jinja2.TemplateError as exc:
            return RejectedRow(
                row=number, custom_id=custom_id, field="prompt_template", reason=f"template error: {exc}"
            )
        except ValidationError as exc:
            field, message = _first_error(exc)
            return RejectedRow(
                row=number, custom_id=custom_id, field=field, reason=f"row {number}: {message}"
            )
        return item.at_row(number) if isinstance(item, LLMRequest) else item

    def _defaults(self) -> dict[str, Any]:
        values: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "kind": self.kind}
        if self.temperature is not None:
            values["temperature"] = self.temperature
        if self.response_schema is not None:
            values["response_schema"] = self.response_schema
        if self.extra:
            values["extra"] = self.extra
        return values

    def _from_template(self, custom_id: str, row: dict[str, Any]) -> LLMRequest:
        prompt = self._template.render(**row).strip()  # type: ignore[union-attr]
        system = self._system_template.render(**row).strip() if self._system_template else None
        values = self._defaults()
        if self.kind is RequestKind.EMBEDDING:
            values["input"] = prompt
        else:
            values["messages"] = [Message(role="user", content=prompt)]
            values["system"] = system
        return LLMRequest(custom_id=custom_id, **values)

    def _from_callable(self, number: int, custom_id: str, row: dict[str, Any]) -> Item:
        try:
            built = self._build(row)  # type: ignore[misc]
        except Exception as exc:  # a user callable may raise anything; the row is rejected, not the run
            return RejectedRow(
                row=number,
                custom_id=custom_id,
                field="build_request",
                reason=f"row {number}: build_request raised {type(exc).__name__}: {exc}",
            )
        data = built.model_dump(exclude_unset=True) if isinstance(built, LLMRequest) else dict(built)
        data.setdefault("custom_id", custom_id)
        for key, value in self._defaults().items():
            if data.get(key) is None:
                data[key] = value
        return LLMRequest.model_validate(data)

    def _from_request_row(self, custom_id: str, row: dict[str, Any]) -> LLMRequest:
        """A row that already is a request: an LLMRequest, an OpenAI batch line or an Anthropic one."""
        data = dict(row)
        if "body" in data and "url" in data:
            data = {"custom_id": data.get("custom_id"), "native": data["body"], "endpoint": data["url"]}
        elif "params" in data and "custom_id" in data:
            data = {"custom_id": data["custom_id"], "native": data["params"]}
        data["custom_id"] = data.get("custom_id") or custom_id
        data.pop("id", None)
        for key, value in self._defaults().items():
            if data.get(key) is None:
                data[key] = value
        return LLMRequest.model_validate(data)
