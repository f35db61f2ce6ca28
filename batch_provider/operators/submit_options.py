"""What a submit task checks before it reads a row or makes a paid call: its options, the options
its provider accepts, and that its run folder is writable; and the errors it fails with
(:func:`task_errors` turns the core's errors into them).

Invariants:
- A task-wide mistake fails the task before any paid call, with an error naming the option, why,
  and what to do; these errors are ``AirflowFailException`` (a retry cannot fix them).
- The checks are pure or touch only the run folder: nothing here talks to a provider.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from batch_provider.core.errors import RequestRejected
from batch_provider.core.models import LLMRequest, Message, RequestKind
from batch_provider.core.records import EmptyInputError, InputError
from batch_provider.core.rejects import TooManyRejectsError
from batch_provider.core.render import RequestBuilder, TemplateVariableError
from batch_provider.core.submission import BudgetExceededError


class TaskBudgetExceededError(BudgetExceededError, AirflowFailException):
    """The submit task's estimate is over ``max_cost_usd``: fails the task without Airflow retries
    (a retry cannot change the estimate) and is still a :class:`BudgetExceededError`."""


class TaskInputError(InputError, AirflowFailException):
    """The input as a whole cannot be read (missing, unreadable): fails without Airflow retries."""


class TaskEmptyInputError(EmptyInputError, AirflowFailException):
    """The input holds no rows and ``on_empty="fail"``."""


class TaskTemplateError(TemplateVariableError, AirflowFailException):
    """The prompt template names a column no row has: fails without retries, nothing sent."""


class TaskRejectsError(TooManyRejectsError, AirflowFailException):
    """Too many rows rejected (by default: all of them): fails without retries, nothing sent."""


class TaskOptionError(ValueError, AirflowFailException):
    """An option of the task that the provider requires is missing, or one it refuses is given."""


class RunPathError(OSError, AirflowFailException):
    """The run folder cannot be written: fails without retries, naming the path and the fix."""


ON_EMPTY = ("skip", "fail")


def check_submit_options(
    *,
    on_empty: str,
    max_rejected_fraction: float | None,
    sources: Mapping[str, Any],
    builders: Mapping[str, Any],
) -> None:
    """Raise ``ValueError`` (at DAG parse time) when the options contradict each other: ``sources``
    maps input_path/records/requests_path to their values, ``builders`` the ways rows become
    requests (prompt_template, prompt_template_param, build_request)."""
    if on_empty not in ON_EMPTY:
        raise ValueError(f"on_empty must be one of {', '.join(ON_EMPTY)}, got {on_empty!r}")
    if max_rejected_fraction is not None and not 0 <= max_rejected_fraction <= 1:
        raise ValueError(
            f"max_rejected_fraction is a share of the rows, from 0 to 1; got {max_rejected_fraction!r}"
        )
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of input_path, records or requests_path (got {given or 'none'})"
        )
    given_builders = [name for name, value in builders.items() if value is not None]
    if len(given_builders) > 1:
        raise ValueError(
            "give at most one of prompt_template, prompt_template_param, build_request "
            f"(got {given_builders})"
        )
    if sources.get("requests_path") is None and not given_builders:
        raise ValueError(
            "rows need a prompt_template, prompt_template_param or build_request to become requests"
        )


def option_problem(backend: Any, builder: RequestBuilder) -> str | None:
    """Why the task's own options cannot make a request for this provider, or None (a probe
    request built from them is encoded by the backend; nothing is sent)."""
    probe = LLMRequest(
        custom_id="option-check",
        model=builder.model,
        max_tokens=builder.max_tokens,
        kind=builder.kind,
        temperature=builder.temperature,
        response_schema=builder.response_schema,
        extra=builder.extra,
        input="check" if builder.kind is RequestKind.EMBEDDING else None,
        messages=[] if builder.kind is RequestKind.EMBEDDING else [Message(role="user", content="check")],
    )
    try:
        backend.encode(probe)
    except RequestRejected as exc:
        return (
            f"the task's {exc.field!r} cannot be sent to {backend.provider.value}: {exc.reason}. "
            f"Set it on the task (e.g. {exc.field}=...) or change it; nothing was sent."
        )
    return None


def check_run_path(run_dir: Any) -> None:
    """Write and remove a probe file in the run folder, or fail naming the path and the fix."""
    probe = run_dir.root / ".write-check"
    try:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as fh:
            fh.write(b"ok\n")
        probe.unlink()
    except OSError as exc:
        raise RunPathError(
            f"cannot write the run folder {run_dir.root} ({type(exc).__name__}: {exc}); make it "
            "writable by the Airflow worker, or point run_path (or [batch_provider] run_path) "
            "at a writable location. Nothing was sent."
        ) from None


@contextmanager
def task_errors(on_empty: str, log: logging.Logger) -> Iterator[None]:
    """Turn the core's run-wide errors into the task's: each fails the task without retries, except
    an empty input with ``on_empty="skip"``, which skips it (and, through it, wait, collect and
    retry)."""
    try:
        yield
    except BudgetExceededError as exc:
        log.error("%s", exc)
        raise TaskBudgetExceededError(str(exc)) from exc
    except EmptyInputError as exc:
        if on_empty == "skip":
            log.info("%s; on_empty='skip': skipping this task and wait, collect, retry", exc)
            raise AirflowSkipException(f"{exc} (on_empty='skip')") from None
        raise TaskEmptyInputError(f"{exc} (on_empty='fail')") from None
    except InputError as exc:
        raise TaskInputError(str(exc)) from None
    except TemplateVariableError as exc:
        raise TaskTemplateError(str(exc)) from None
    except TooManyRejectsError as exc:
        raise TaskRejectsError(str(exc)) from None
