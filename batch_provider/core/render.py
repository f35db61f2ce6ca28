"""Turn input rows into :class:`LLMRequest` objects: a Jinja prompt template, a callable, or rows
that already are requests.

Invariants:
- One row in, one item out: an ``LLMRequest`` or a ``RejectedRow`` naming the row, the field and
  what to do. A template that references a column the row lacks rejects that row only; a column
  that *no* row has is a task-wide mistake: once every row was rendered, :meth:`RequestBuilder.render`
  raises :class:`TemplateVariableError` ("did you mean …") instead of ending normally, so nothing
  is sent.
- A column the template uses whose value is null (``None``, NaN) or empty (blank text) rejects the
  row, naming row and column, unless ``render_missing_as_empty``: a prompt never says "None".
- Rendering is deterministic, so a rerun of the same rows yields byte-identical requests.
- A template that is text and bare ``{{ name }}`` outputs only (decided on Jinja's own parse of it,
  :class:`PlainTemplate`) is rendered without a Jinja context: its text pieces as Jinja parsed
  them, each name as ``str()`` of the row's value, which is what Jinja's compiled code does in
  this environment (no ``finalize``, no autoescape). A row the shortcut cannot render as Jinja
  would (a name it lacks, a column named ``self``, a key that is not a string, a value whose
  ``str()`` raises) goes through Jinja itself, so the text, the rejects and the errors are the same.
- Rows taken as requests that differ from an earlier row only in their one user message (prompt
  strings of ``@task.batch_llm``) come out as :class:`ShapedRequest` items standing for exactly
  the request the general path makes of them (:mod:`.shaped`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from batch_provider.core.models import LLMRequest, Message, RejectedRow, RequestKind, TextPart
from batch_provider.core.plain_template import PlainTemplate
from batch_provider.core.shaped import MAX_SHAPES, Make, RequestShape, ShapedRequest, row_form, with_text

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)

Item = LLMRequest | RejectedRow | ShapedRequest
SystemPrompt = str | list[str] | list[dict[str, Any]] | list[TextPart]

OVERRIDABLE = ("model", "system", "max_tokens", "temperature")
"""Request fields a row may set through a column the user names (``model_column=`` …)."""

_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")


class TemplateVariableError(ValueError):
    """The prompt template names a column that no input row has: every row would be rejected, so
    the task fails before anything is sent. The message names the column and the closest ones."""


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN: a null from pandas / Parquet
        return True
    return isinstance(value, str) and not value.strip()


def _variables(*templates: str | None) -> list[str]:
    """Top-level names the templates read, in a stable order."""
    names: set[str] = set()
    for text in templates:
        if text:
            names |= meta.find_undeclared_variables(_ENV.parse(text))
    return sorted(names)


def _system_texts(system: SystemPrompt | None) -> list[str]:
    """A system prompt as a list of block texts (one for a plain string)."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [system]
    texts: list[str] = []
    for block in system:
        if isinstance(block, TextPart):
            texts.append(block.text)
        elif isinstance(block, dict):
            texts.append(TextPart.model_validate(block).text)
        else:
            texts.append(str(block))
    return texts


def _first_error(exc: ValidationError) -> tuple[str | None, str]:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error.get("loc", ())) or None
    return field, error.get("msg", str(exc))


class RequestBuilder:
    """Builds requests from rows with defaults the rows do not override.

    ``id_field``: the column holding each row's custom_id. ``None`` means: ``custom_id`` or ``id``
    when the row has one, else ``row-<n>`` from the row number.
    ``system``: a string, or a list of blocks (strings or ``{"type": "text", "text": …}``); each
    text is a template over the row. ``cache_system_prompt`` asks the provider to cache the system
    prompt (Anthropic ``cache_control`` on its last block; OpenAI and Gemini cache shared prefixes
    by themselves, and the system prompt comes first).
    ``render_missing_as_empty``: render null and blank values as empty text instead of rejecting
    the row.
    """

    def __init__(
        self,
        *,
        template: str | None = None,
        build: Callable[[dict[str, Any]], LLMRequest | dict[str, Any]] | None = None,
        system: SystemPrompt | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        id_field: str | None = None,
        response_schema: dict[str, Any] | None = None,
        kind: RequestKind | str = RequestKind.CHAT,
        extra: dict[str, Any] | None = None,
        render_missing_as_empty: bool = False,
        cache_system_prompt: bool = False,
        columns: dict[str, str] | None = None,
    ):
        if template is not None and build is not None:
            raise ValueError("give either a prompt template or a build callable, not both")
        self._template = _ENV.from_string(template) if template is not None else None
        self._build = build
        system_texts = _system_texts(system)
        self._system_blocks = not isinstance(system, str) and system is not None
        self._system_templates = [_ENV.from_string(text) for text in system_texts]
        self._used = _variables(template, *system_texts) if template is not None else []
        plain = [PlainTemplate.of(_ENV, text) for text in (template, *system_texts)] if template else [None]
        self._plain = [p for p in plain if p is not None] if None not in plain else None
        """The prompt template then the system templates, rendered without Jinja; None when one of
        them needs Jinja."""
        self._keys: set[Any] = set()
        """Every row key seen so far, as given: a row whose keys are all in it adds no column."""
        self._odd_keys = False
        """A row had a key that is not exactly a ``str``: columns are then gathered on every row."""
        self.render_missing_as_empty = render_missing_as_empty
        self.cache_system_prompt = cache_system_prompt
        self._columns: set[str] = set()
        """Every column name seen in a row so far."""
        self._undefined: dict[str, int] = {}
        """Template names a row lacked, with how many rows lacked each."""
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.id_field = id_field
        self.response_schema = response_schema
        self.kind = RequestKind(kind)
        self.extra = dict(extra or {})
        unknown = sorted(set(columns or {}) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(f"per-row columns can set {', '.join(OVERRIDABLE)}; not {', '.join(unknown)}")
        self.columns = {k: v for k, v in (columns or {}).items() if v}
        """Request field → the row column whose value, when not blank, overrides it for that row."""
        self._shapes: dict[Any, RequestShape | None] | None = {} if build is None else None
        """Shapes of requests that differ only in their one user message (:mod:`.shaped`), by
        shape key; None when a callable builds the requests."""

    def render(
        self, rows: Iterable[tuple[int, dict[str, Any] | RejectedRow]], *, same_columns: bool = False
    ) -> Iterator[Item]:
        """Items of ``rows`` in order. ``same_columns``: every row has the same columns (a CSV
        header, a Parquet schema), so a template name the first row lacks fails at once."""
        for number, row in rows:
            if isinstance(row, RejectedRow):
                yield row
                continue
            item = self.render_row(number, row)
            if same_columns:
                self.check_variables()
                same_columns = False
            yield item
        self.check_variables()

    def check_variables(self) -> None:
        """Raise :class:`TemplateVariableError` when a name the template reads is in no row seen."""
        absent = sorted(name for name in self._undefined if name not in self._columns)
        if not absent:
            return
        name = absent[0]
        columns = sorted(self._columns)
        close = difflib.get_close_matches(name, columns, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        shown = ", ".join(repr(c) for c in columns[:20]) + (" …" if len(columns) > 20 else "")
        count = self._undefined[name]
        raise TemplateVariableError(
            f"the prompt template uses {name!r}, which no input row has (rejected on {count} "
            f"row{'s' if count != 1 else ''}); {hint}The rows have: {shown or 'no columns'}. Fix the "
            "template or the data; nothing was sent."
        )

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
        """The item of input row ``number``: a :class:`ShapedRequest` when the row is of a shape
        seen before (see :mod:`.shaped`), else what :meth:`general_row` makes of it."""
        if self._shapes is None or self._template is not None or self.id_field is not None:
            return self.general_row(number, row)
        form = row_form(row)
        if form is None:
            return self.general_row(number, row)
        key, text = form
        return self._shaped(
            key,
            f"row-{number}",
            text,
            lambda custom_id, text: self.request_from_row(custom_id, with_text(row, text)),
            number=number,
            first=lambda: self.general_row(number, row),
        )

    def _shaped(
        self, key: Any, custom_id: str, text: str, make: Make, *, number: int, first: Callable[[], Item]
    ) -> Item:
        """A :class:`ShapedRequest` when the requests of ``key`` have a shape; else ``first()``,
        the general path's item, which makes the shape when it is the first of its key."""
        shapes = self._shapes
        assert shapes is not None
        shape = shapes.get(key)
        if shape is not None:
            return ShapedRequest(custom_id, number, text, shape)
        item = first()
        if key not in shapes and len(shapes) < MAX_SHAPES:
            shapes[key] = RequestShape.of(make, item)
        return item

    def general_row(self, number: int, row: dict[str, Any]) -> Item:
        custom_id = self.custom_id(number, row)
        if isinstance(custom_id, RejectedRow):
            return custom_id
        if self._odd_keys or not self._keys.issuperset(row):
            self._columns.update(str(k) for k in row)
            self._keys.update(row)
            if not all(type(k) is str for k in row):
                self._odd_keys = True
                self._plain = None
            elif "self" in row:
                self._plain = None  # ``template.render(self=…)`` fails: leave that to Jinja
        try:
            if self._build is not None:
                item = self._from_callable(number, custom_id, row)
            elif self._template is not None:
                item = self._from_template(number, custom_id, row)
            else:
                item = self.request_from_row(custom_id, row)
        except jinja2.UndefinedError as exc:
            found = _UNDEFINED.match(exc.message or "")
            hint = ""
            if found is not None:
                name = found.group(1)
                self._undefined[name] = self._undefined.get(name, 0) + 1
                close = difflib.get_close_matches(name, [str(k) for k in row], n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            return RejectedRow(
                row=number,
                custom_id=custom_id,
                field="prompt_template",
                reason=f"row {number}: the template uses {exc.message}{hint}; "
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

    def _blank_fields(self, number: int, custom_id: str, row: dict[str, Any]) -> RejectedRow | dict[str, Any]:
        """``row`` with blank values of used columns made empty, or the reject naming them."""
        blank = [name for name in self._used if name in row and _is_blank(row[name])]
        if not blank:
            return row
        if self.render_missing_as_empty:
            return {**row, **{name: "" for name in blank}}
        name = blank[0]
        what = "null" if row[name] is None or isinstance(row[name], float) else "empty"
        return RejectedRow(
            row=number,
            custom_id=custom_id,
            field=name,
            reason=f"row {number}: column {name!r} used by the template is {what}; fill it, drop the "
            "row, or set render_missing_as_empty=True to render it as empty text",
        )

    def _from_template(self, number: int, custom_id: str, row: dict[str, Any]) -> Item:
        checked = self._blank_fields(number, custom_id, row)
        if isinstance(checked, RejectedRow):
            return checked
        chat = self.kind is not RequestKind.EMBEDDING
        rendered = self._plain_render(checked, chat=chat)
        if rendered is None:
            prompt = self._template.render(**checked)  # type: ignore[union-attr]
            texts = [t.render(**checked) for t in self._system_templates] if chat else []
        else:
            prompt, texts = rendered
        prompt = prompt.strip()
        values = self._defaults()
        if not chat:
            values["input"] = prompt
        else:
            values["messages"] = [Message(role="user", content=prompt)]
            texts = [t.strip() for t in texts]
            if self._system_blocks:
                values["system"] = [TextPart(text=t) for t in texts if t] or None
            else:
                values["system"] = texts[0] if texts and texts[0] else None
            if self.cache_system_prompt and values["system"]:
                values["cache_system_prompt"] = True
            system = values["system"]
            if (
                prompt
                and not self.columns
                and self._shapes is not None
                and (system is None or type(system) is str)
            ):

                def make(custom_id: str, text: str) -> LLMRequest:
                    return LLMRequest(
                        custom_id=custom_id, **{**values, "messages": [Message(role="user", content=text)]}
                    )

                return self._shaped(
                    ("template", system),
                    custom_id,
                    prompt,
                    make,
                    number=number,
                    first=lambda: make(custom_id, prompt),
                )
        return LLMRequest(custom_id=custom_id, **self._row_overrides(row, values))

    def _plain_render(self, row: dict[str, Any], *, chat: bool) -> tuple[str, list[str]] | None:
        """The prompt and system texts rendered without Jinja, unstripped; None when the row must
        go through Jinja (see :class:`PlainTemplate`)."""
        plain = self._plain
        if plain is None:
            return None
        try:
            prompt = plain[0].render(row)
            return prompt, [t.render(row) for t in plain[1:]] if chat else []
        except Exception:  # a name the row lacks, a value whose str() raises: Jinja decides
            return None

    def _row_overrides(self, row: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with the fields the row sets through its named columns (blank cells keep
        the task's value). A bad value is checked by ``LLMRequest``, which names the field."""
        for name, column in self.columns.items():
            value = row.get(column)
            if not _is_blank(value):
                values[name] = str(value) if name in ("model", "system") else value
        return values

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
        for key, value in self._row_overrides(row, self._defaults()).items():
            if data.get(key) is None:
                data[key] = value
        return LLMRequest.model_validate(data)

    def request_from_row(self, custom_id: str, row: dict[str, Any]) -> LLMRequest:
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
