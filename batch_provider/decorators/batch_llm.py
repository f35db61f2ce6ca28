"""``@task.batch_llm``: a TaskFlow function returns the rows; the usual group runs them.

::

    @task.batch_llm(provider="openai", model="gpt-4o-mini", max_tokens=200,
                    prompt_template="Summarise: {{ text }}")
    def reviews(ds=None) -> list[dict]:
        return [{"id": r.id, "text": r.text} for r in load_reviews(ds)]

    summary = reviews()   # group "reviews": submit >> wait >> collect >> retry

Calling the function builds the same task group as :func:`~batch_provider.task_group.llm_batch_group`
(same options, passed through unchanged) whose ``submit`` task calls the function and submits
what it returns. The call returns the ``retry`` task's output: the run summary (counts and the
paths of ``results.jsonl`` and the other run files).

What the function may return (a list, all items of one kind):

- dicts with a ``prompt_template`` / ``prompt_template_param`` / ``build_request``: rows, rendered
  into requests as from ``records``;
- dicts without one: requests as given (``LLMRequest`` fields, or native OpenAI / Anthropic batch
  lines), like a ``requests_path`` file;
- strings: one prompt each (``input`` for ``kind="embedding"``), custom ids ``row-1``, ``row-2`` …

Invariants:

- The function runs inside ``submit``, so a retried submit calls it again. It must return the same
  rows on every try (no ``datetime.now()``, no unordered sources): the rows feed the run's
  fingerprint, and a different input in the same run folder is refused rather than paid twice.
- What it returns is never rendered by Jinja: strings are sent as written. Only the operator
  options that are templated anyway (``model``, ``metadata``, ``run_path`` …) are rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar

import attr
from airflow.sdk import XComArg
from airflow.sdk.bases.decorator import (
    DecoratedOperator,
    TaskDecorator,
    _TaskDecorator,
    determine_kwargs,
    task_decorator_factory,
)
from airflow.sdk.definitions.context import context_merge

from batch_provider.core.heap import heap_frozen
from batch_provider.core.models import LLMRequest, RequestKind
from batch_provider.operators.submit import SubmitBatchOperator
from batch_provider.task_group import llm_batch_group

DECORATOR_NAME = "batch_llm"
_BUILDERS = ("prompt_template", "prompt_template_param", "build_request")
_INPUTS = ("input_path", "records", "requests_path")


def _requests_as_given(row: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - a marker only
    """Stands in for ``build_request`` at parse time when the function returns requests; replaced
    by "no builder" (rows taken as requests) before rendering."""
    return row


def rows_from_return(value: Any, *, kind: str, system: str | None = None) -> list[dict[str, Any]]:
    """The decorated function's return value as rows for the submit task. ``system`` (requests
    mode only) goes into every prompt string's request and every neutral request without one.

    Raises ``TypeError`` naming the item and what to return instead when the value is not a list
    of dicts, ``LLMRequest`` objects or strings (one kind per list).
    """
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Collection):
        raise TypeError(
            f"@task.{DECORATOR_NAME}: the function returned {type(value).__name__}; return a list of "
            "dicts (rows or requests), LLMRequest objects or prompt strings"
        )
    rows: list[dict[str, Any]] = []
    first: type | None = None
    embedding: bool | None = None  # read from ``kind`` once, at the first prompt string
    for index, item in enumerate(value):
        kind_of = type(item)
        if kind_of is str or kind_of is dict:  # the usual items, told apart without the ABC check
            item_type = kind_of
        else:
            item_type = str if isinstance(item, str) else None
            if isinstance(item, (Mapping, LLMRequest)):
                item_type = dict
        if item_type is None or (first is not None and item_type is not first):
            raise TypeError(
                f"@task.{DECORATOR_NAME}: item {index} of the returned list is {type(item).__name__}"
                f"{'' if item_type is None else ' after ' + first.__name__ + ' items'}; return only dicts "
                "(rows or requests), LLMRequest objects, or only prompt strings"
            )
        first = item_type
        if isinstance(item, str):
            if embedding is None:
                embedding = RequestKind(kind) is RequestKind.EMBEDDING
            rows.append(_prompt_request(item, embedding=embedding, system=system))
        elif isinstance(item, LLMRequest):
            rows.append(item.model_dump(mode="json", exclude_unset=True))
        else:
            rows.append(dict(item))
            if system and "messages" in item and not item.get("system"):
                rows[-1]["system"] = system
    return rows


def _prompt_request(prompt: str, *, embedding: bool, system: str | None) -> dict[str, Any]:
    if embedding:
        return {"input": prompt}
    request: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    if system:
        request["system"] = system
    return request


class BatchLLMSubmitOperator(DecoratedOperator, SubmitBatchOperator):
    """The submit task of ``@task.batch_llm``: calls the decorated function for its rows, then
    submits them exactly as :class:`SubmitBatchOperator` does with ``records``.

    Without ``prompt_template``, ``prompt_template_param`` or ``build_request``, returned dicts are
    requests as given. Returned strings are prompts and cannot be combined with a template or
    ``build_request`` (the error says so at run time).
    """

    template_fields: Sequence[str] = tuple(
        field
        for field in (*DecoratedOperator.template_fields, *SubmitBatchOperator.template_fields)
        if field != "records"
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        "metadata": "json",
    }
    custom_operator_name = f"@task.{DECORATOR_NAME}"

    def __init__(
        self,
        *,
        python_callable: Callable,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        given = [name for name in _INPUTS if kwargs.get(name) is not None]
        if given:
            raise ValueError(
                f"@task.{DECORATOR_NAME} takes its rows from the decorated function; remove {given} "
                "(or use llm_batch_group for a file or XCom input)"
            )
        self.rows_are_requests = all(kwargs.get(name) is None for name in _BUILDERS)
        if self.rows_are_requests:
            kwargs["build_request"] = _requests_as_given
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, records=[], **kwargs
        )

    def execute(self, context: Any) -> Any:
        with heap_frozen():  # the worker's heap, then the returned rows (see core/heap.py)
            return self._execute(context)

    def _execute(self, context: Any) -> Any:
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        returned = self.python_callable(*self.op_args, **kwargs)
        system = self.system if self.rows_are_requests else None
        self.records = rows_from_return(returned, kind=self.kind, system=system)
        if self.records and isinstance(next(iter(returned)), str) and not self.rows_are_requests:
            raise TypeError(
                f"@task.{DECORATOR_NAME}: the function returned prompt strings, which are sent as "
                "written; return dicts to render them with prompt_template or build_request"
            )
        if self.rows_are_requests:
            self.build_request = None
            self.system = None  # now inside the requests; there are no rows to render it over
        self.log.info("The decorated function returned %d item(s)", len(self.records))
        return SubmitBatchOperator.execute(self, context)


@attr.define(slots=False)
class _BatchLLMTaskDecorator(_TaskDecorator):
    """Calling the decorated function builds the whole task group and returns the run summary."""

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        options = dict(self.kwargs)
        group_id = options.pop("task_id")
        options.pop("multiple_outputs", None)
        group = llm_batch_group(
            group_id,
            submit_operator_class=self.operator_class,
            python_callable=self.function,
            op_args=args,
            op_kwargs=kwargs,
            **options,
        )
        submit = group.children[group.child_id("submit")]
        if self.function.__doc__ and not submit.doc_md:
            submit.doc_md = self.function.__doc__
        return XComArg(group.children[group.child_id("retry")])

    def expand(self, **map_kwargs: Any) -> XComArg:
        raise TypeError(
            f"@task.{DECORATOR_NAME} builds a task group and cannot be mapped itself; call it inside a "
            "@task_group and .expand() that group (see docs: mapping and backfills)"
        )

    def expand_kwargs(self, kwargs: Any, *, strict: bool = True) -> XComArg:
        return self.expand()

    def partial(self, **kwargs: Any) -> Any:
        return self.expand()


def batch_llm_task(python_callable: Callable | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.batch_llm(**options)``: options are those of
    :func:`~batch_provider.task_group.llm_batch_group` except the input (the function returns it).
    The group id is the function's name (``.override(task_id=...)`` to change it)."""
    decorator = task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=BatchLLMSubmitOperator,
        **kwargs,
    )
    if python_callable is not None:
        return _as_group_decorator(decorator)
    return lambda function: _as_group_decorator(decorator(function))  # type: ignore[return-value]


def _as_group_decorator(decorator: Any) -> Any:
    return _BatchLLMTaskDecorator(
        function=decorator.function,
        operator_class=decorator.operator_class,
        multiple_outputs=False,
        kwargs=decorator.kwargs,
        decorator_name=DECORATOR_NAME,
    )
