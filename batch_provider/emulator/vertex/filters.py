"""The ``filter`` of ``batchPredictionJobs.list``: a subset of Google's AIP-160 grammar.

Comparisons ``FIELD OP VALUE`` joined by ``AND`` (or juxtaposition), ``OR``, ``NOT`` / ``-`` and
parentheses; ``OR`` binds tighter than ``AND``, as AIP-160 says. Fields and operators::

    display_name        =  !=  :       (a value with ``*`` is a wildcard pattern)
    model_display_name  =  !=  :       (the model id, e.g. gemini-2.5-flash)
    state               =  !=          (JOB_STATE_*)
    labels.KEY          =  !=  :       (``labels.KEY:*``: the job has the label)
    create_time, update_time, end_time  =  !=  <  <=  >  >=   (RFC 3339 timestamps)

Values are double-quoted strings or bare words. Anything else is a :class:`FilterError` (the route
answers 400 INVALID_ARGUMENT naming what it could not read).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

Fields = Mapping[str, Any]
"""A job as the filter sees it: ``display_name``, ``model_display_name``, ``state``, ``labels``,
and the times as Unix seconds (``end_time`` None until the job ends)."""
Predicate = Callable[[Fields], bool]

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<op><=|>=|!=|=|<|>|:)|(?P<paren>[()])|(?P<word>[^\s()=!<>:"]+))'
)
_TIME_FIELDS = ("create_time", "update_time", "end_time")
_STRING_OPS = ("=", "!=", ":")


class FilterError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"cannot read the filter at position {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((kind, value))
    return out


def _time(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise FilterError(f"{value!r} is not an RFC 3339 timestamp") from None


def _text_match(actual: str | None, op: str, value: str) -> bool:
    if op == ":" and value == "*":
        return actual is not None
    hit = actual is not None and (fnmatch.fnmatchcase(actual, value) if "*" in value else actual == value)
    return not hit if op == "!=" else hit


def _comparison(name: str, op: str, value: str) -> Predicate:
    if name in _TIME_FIELDS:
        t = _time(value)
        ops: dict[str, Callable[[float, float], bool]] = {
            "=": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }
        if op not in ops:
            raise FilterError(f"operator {op!r} does not apply to {name}")
        compare = ops[op]
        return lambda job: job.get(name) is not None and compare(float(job[name]), t)
    if op not in _STRING_OPS:
        raise FilterError(f"operator {op!r} does not apply to {name}")
    if name.startswith("labels."):
        key = name[len("labels.") :]
        if not key:
            raise FilterError("labels needs a key: labels.KEY")
        return lambda job: _text_match((job.get("labels") or {}).get(key), op, value)
    if name == "state" and op == ":":
        raise FilterError("state takes = or !=")
    if name in ("display_name", "model_display_name", "state"):
        return lambda job: _text_match(job.get(name), op, value)
    raise FilterError(
        f"unknown field {name!r}; known: display_name, model_display_name, state, labels.KEY, "
        "create_time, update_time, end_time"
    )


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError("the filter ends too early")
        self.i += 1
        return tok

    def conjunction(self) -> Predicate:
        parts = [self.disjunction()]
        while (tok := self.peek()) is not None and tok != ("paren", ")"):
            if tok == ("word", "AND"):
                self.take()
            parts.append(self.disjunction())
        return lambda job: all(p(job) for p in parts)

    def disjunction(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == ("word", "OR"):
            self.take()
            parts.append(self.unary())
        return lambda job: any(p(job) for p in parts)

    def unary(self) -> Predicate:
        tok = self.take()
        if tok == ("word", "NOT"):
            inner = self.unary()
            return lambda job: not inner(job)
        if tok[0] == "word" and tok[1].startswith("-") and len(tok[1]) > 1:
            self.tokens[self.i - 1] = ("word", tok[1][1:])
            self.i -= 1
            inner = self.unary()
            return lambda job: not inner(job)
        if tok == ("paren", "("):
            inner = self.conjunction()
            if self.take() != ("paren", ")"):
                raise FilterError("missing ')'")
            return inner
        if tok[0] != "word":
            raise FilterError(f"expected a field name, found {tok[1]!r}")
        op = self.take()
        if op[0] != "op":
            raise FilterError(f"expected an operator after {tok[1]!r}, found {op[1]!r}")
        value = self.take()
        if value[0] not in ("word", "str"):
            raise FilterError(f"expected a value after {tok[1]}{op[1]}, found {value[1]!r}")
        return _comparison(tok[1], op[1], value[1])


def parse(text: str | None) -> Predicate:
    """The predicate of ``text`` (everything passes when it is empty)."""
    if not text or not text.strip():
        return lambda job: True
    parser = _Parser(_tokens(text))
    predicate = parser.conjunction()
    if parser.peek() is not None:
        raise FilterError(f"unexpected {parser.peek()[1]!r}")  # type: ignore[index]
    return predicate
