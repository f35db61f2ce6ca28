"""Structured output: a Python type (pydantic model, ``TypedDict``, dataclass, ``list[...]`` of
them) or a JSON schema, turned into the schema sent to the provider and the validator of answers.

Invariants:
- :class:`OutputSpec` is plain JSON (it is stored in the run folder as ``output_type.json`` and
  crosses DAG serialisation): the wire schema, the type's import path (``module:qualname``) when
  it has one, and whether the answer is wrapped.
- The wire schema always has an object at the top (OpenAI, Anthropic and Bedrock tools need
  one): a type whose schema is not an object (``list[Ticket]``) is asked for as
  ``{"items": <value>}`` on every provider and unwrapped at collect, so ``parsed`` holds the value.
- Validation uses the type itself when it can be imported (from ``sys.modules`` first, so a type
  defined in a DAG file works in the task that parsed it), else the JSON schema (jsonschema),
  and logs which one it uses. Either way an answer is valid or yields error messages, never raises.
"""

from __future__ import annotations

import importlib
import logging
import sys
import typing
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from batch_provider.core.models import ItemStatus, ResultRecord
from batch_provider.core.rundir import write_json_atomic

log = logging.getLogger(__name__)

WRAP_KEY = "items"
OUTPUT_SPEC_FILE = "output_type.json"
DEFAULT_RETRY_INVALID_OUTPUT = 1


class OutputSpec(BaseModel):
    """What the run asks the model to answer, and how answers are checked."""

    json_schema: dict[str, Any]
    """The schema sent to the provider (an object at the top level)."""
    name: str = "output"
    import_path: str | None = None
    """``module:qualname`` of the type (of the element type when ``is_list``); None for a schema."""
    is_list: bool = False
    wrapped: bool = False
    """The answer is ``{"items": value}``: ``parsed`` holds ``value``."""
    retry_invalid_output: int = DEFAULT_RETRY_INVALID_OUTPUT
    """How many times a row whose answer does not validate is sent again."""

    def inner_schema(self) -> dict[str, Any]:
        """The schema of the value itself (unwrapped), with the shared ``$defs``."""
        if not self.wrapped:
            return self.json_schema
        inner = dict(self.json_schema["properties"][WRAP_KEY])
        if "$defs" in self.json_schema:
            inner["$defs"] = self.json_schema["$defs"]
        return inner


def _is_type_like(value: Any) -> bool:
    return isinstance(value, type) or typing.get_origin(value) is not None


def _import_path(tp: Any) -> str | None:
    module, qualname = getattr(tp, "__module__", None), getattr(tp, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "builtins":
        return None
    return f"{module}:{qualname}"


def _name(tp: Any, schema: dict[str, Any]) -> str:
    raw = str(schema.get("title") or getattr(tp, "__name__", "") or "output")
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in raw)[:64] or "output"


def output_spec(output_type: Any, *, retry_invalid_output: int = DEFAULT_RETRY_INVALID_OUTPUT) -> OutputSpec:
    """The spec of ``output_type``: a pydantic model, ``TypedDict``, dataclass, ``list[...]`` of
    one of them, or a JSON schema dict. Raises ``TypeError`` naming what was given otherwise."""
    if retry_invalid_output < 0:
        raise ValueError(f"retry_invalid_output counts resubmissions: 0 or more, got {retry_invalid_output}")
    if isinstance(output_type, OutputSpec):
        return output_type.model_copy(update={"retry_invalid_output": retry_invalid_output})
    import_path: str | None = None
    is_list = False
    if isinstance(output_type, dict):
        schema = dict(output_type)
        name = _name(None, schema)
    elif _is_type_like(output_type):
        try:
            schema = TypeAdapter(output_type).json_schema()
        except Exception as exc:  # pydantic raises several kinds for types it cannot describe
            raise TypeError(
                f"output_type {output_type!r} cannot be turned into a JSON schema ({exc}); give a "
                "pydantic model, TypedDict, dataclass, list[...] of one, or a JSON schema dict"
            ) from None
        element = output_type
        if typing.get_origin(output_type) is list:
            (element,) = typing.get_args(output_type) or (Any,)
            is_list = True
        import_path = _import_path(element) if isinstance(element, type) else None
        name = _name(element, schema) + ("_list" if is_list else "")
    else:
        raise TypeError(
            f"output_type must be a pydantic model, TypedDict, dataclass, list[...] of one, or a "
            f"JSON schema dict; got {type(output_type).__name__}"
        )
    wrapped = schema.get("type") != "object"
    if wrapped:
        defs = schema.pop("$defs", None)
        schema = {
            "type": "object",
            "title": name,
            "properties": {WRAP_KEY: schema},
            "required": [WRAP_KEY],
            "additionalProperties": False,
            **({"$defs": defs} if defs else {}),
        }
    return OutputSpec(
        json_schema=schema,
        name=name,
        import_path=import_path,
        is_list=is_list,
        wrapped=wrapped,
        retry_invalid_output=retry_invalid_output,
    )


def strict_allowed(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: every object lists all its properties as
    required and forbids others (checked through properties, items, anyOf and ``$defs``)."""
    if isinstance(schema, list):
        return all(strict_allowed(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(props):
            return False
    children: list[Any] = list((schema.get("properties") or {}).values())
    children += list((schema.get("$defs") or {}).values())
    for key in ("items", "anyOf", "allOf", "oneOf"):
        if key in schema:
            children.append(schema[key])
    return all(strict_allowed(c) for c in children)


def import_type(import_path: str) -> Any:
    """The object at ``module:qualname``: from ``sys.modules`` when loaded, else imported."""
    module_name, _, qualname = import_path.partition(":")
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _describe_pydantic(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error.get("loc", ())) or "(top)"
        out.append(f"{where}: {error.get('msg')}")
    return out


class OutputValidator:
    """Checks answers against an :class:`OutputSpec`: the imported type when possible, else the
    JSON schema. ``type`` is the Python type used (None with the schema fallback)."""

    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self.type: Any = None
        self._adapter: TypeAdapter[Any] | None = None
        self._schema_validator: Any = None
        if spec.import_path:
            try:
                element = import_type(spec.import_path)
                self.type = list[element] if spec.is_list else element  # type: ignore[valid-type]
                self._adapter = TypeAdapter(self.type)
            except Exception as exc:  # any import or attribute failure means: use the schema
                log.warning(
                    "output_type %s cannot be imported here (%s: %s); answers are validated "
                    "against its JSON schema only",
                    spec.import_path,
                    type(exc).__name__,
                    exc,
                )
        if self._adapter is None:
            import jsonschema

            schema = spec.inner_schema()
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            self._schema_validator = cls(schema)

    def check(self, value: Any) -> tuple[Any, list[str]]:
        """(the value unwrapped, []) when ``value`` (the answer's JSON) is valid, else (None, errors)."""
        if self.spec.wrapped:
            if not isinstance(value, dict) or WRAP_KEY not in value:
                return None, [f"(top): the answer must be an object with {WRAP_KEY!r}"]
            value = value[WRAP_KEY]
        if self._adapter is not None:
            try:
                self._adapter.validate_python(value)
            except ValidationError as exc:
                return None, _describe_pydantic(exc)
            return value, []
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in self._schema_validator.iter_errors(value)
        ]
        return (None, errors) if errors else (value, [])

    def instance(self, parsed: Any) -> Any:
        """``parsed`` (a result's value) as an instance of the type, or as is without one."""
        return self._adapter.validate_python(parsed) if self._adapter is not None else parsed


def save_output_spec(root: Any, spec: OutputSpec) -> None:
    write_json_atomic(root / OUTPUT_SPEC_FILE, spec.model_dump(mode="json"))


def load_output_spec(root: Any) -> OutputSpec | None:
    path = root / OUTPUT_SPEC_FILE
    if not path.exists():
        return None
    with path.open("rb") as fh:
        return OutputSpec.model_validate_json(fh.read())


def summarise_errors(errors: Iterable[str], limit: int = 5) -> str:
    errors = list(errors)
    shown = "; ".join(errors[:limit])
    return shown + (f" (+{len(errors) - limit} more)" if len(errors) > limit else "")


class OutputChecks:
    """The run's output validator and, per row, how many earlier attempts answered it invalidly:
    an ``invalid_output`` answer stays retryable while that count is under ``retry_invalid_output``."""

    def __init__(
        self, validator: OutputValidator | None = None, allowed: int = DEFAULT_RETRY_INVALID_OUTPUT
    ) -> None:
        self.validator = validator
        self.allowed = allowed
        self.earlier: Counter[str] = Counter()

    @classmethod
    def load(cls, run_dir: Any, attempt: int) -> OutputChecks:
        """The checks for collecting ``attempt`` of ``run_dir`` (a :class:`RunDirectory`)."""
        spec = load_output_spec(run_dir.root)
        allowed = spec.retry_invalid_output if spec else DEFAULT_RETRY_INVALID_OUTPUT
        checks = cls(OutputValidator(spec) if spec else None, allowed)
        for earlier in range(1, attempt):
            path = run_dir.attempt_errors(earlier)
            if not path.exists():
                continue
            with path.open("rb") as fh:
                for line in fh:
                    if b'"invalid_output"' not in line:  # cheap filter before parsing
                        continue
                    record = ResultRecord.model_validate_json(line)
                    if record.status is ItemStatus.INVALID_OUTPUT:
                        checks.earlier[record.custom_id] += 1
        return checks

    def limit_retries(self, record: ResultRecord) -> None:
        error = record.error
        if error is None or not error.retryable:
            return
        if self.earlier[record.custom_id] >= self.allowed:
            error.retryable = False
            error.message += (
                f" (sent {self.earlier[record.custom_id] + 1} times; retry_invalid_output={self.allowed})"
            )
