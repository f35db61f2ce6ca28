"""Templates of text and bare ``{{ name }}`` are rendered without Jinja: the same text, rejects and
errors as Jinja gives, for every template and value below."""

from __future__ import annotations

import datetime
import decimal
import itertools
from typing import Any

import jinja2
import pytest
from markupsafe import Markup

from batch_provider.core import render
from batch_provider.core.models import LLMRequest, RejectedRow
from batch_provider.core.plain_template import PlainTemplate
from batch_provider.core.render import RequestBuilder, TemplateVariableError
from batch_provider.core.shaped import ShapedRequest


class Shown:
    def __str__(self) -> str:
        return "shown ✓"


class Tagged(str):
    def __str__(self) -> str:
        return "tagged"


class Broken:
    def __str__(self) -> str:
        raise RuntimeError("cannot show")


PLAIN = [
    "",
    "plain text",
    "{{ a }}",
    "{{a}}{{b}}",
    "x {{ a }} y {{ b }} z",
    "{{ a }}\n",
    "{{ a }}\n\n",
    "\n{{ a }}",
    "{{- a }}  x  {{ b -}}  \n",
    "{# comment #}{{ a }}{# another #}",
    "{% raw %}{{ a }} {% if %}{% endraw %}{{ b }}",
    "a\r\nb {{ a }}\rc\r\n",
    "ünïcødé {{ a }} ✓ 日本語 🎉",
    "{{ a }}{{ a }}{{ a }}",
    "  {{ a }}  \t",
    "'{{ a }}' \"{{ b }}\" \\ {{ a }}",
    "%s {0} {{ a }} {b}",
]
"""Templates the shortcut takes: text and bare names."""

NOT_PLAIN = [
    "{{ a | upper }}",
    "{{ a.b }}",
    "{{ a['b'] }}",
    "{{ a[0] }}",
    "{% if a %}x{% endif %}",
    "{% for x in a %}{{ x }}{% endfor %}",
    "{{ a ~ b }}",
    "{{ a + 1 }}",
    "{{ 'literal' }}",
    "{{ true }}",
    "{{ none }}",
    "{{ self }}",
    "{{ loop }}",
    "{{ caller }}",
    "{% set x = 1 %}{{ x }}",
    "{{ a() }}",
    "{{ a if b else c }}",
    "{%- if true -%} x {%- endif -%}",
]

VALUES: list[Any] = [
    "text",
    "ünïcødé ✓ 🎉",
    "",
    "   ",
    "  padded\n",
    "line\nbreak\r\n",
    "{{ a }}",
    None,
    0,
    1,
    -17,
    1.5,
    2.0,
    1e16,
    1e-7,
    float("inf"),
    float("nan"),
    True,
    False,
    [1, "a", None],
    {"k": "v"},
    ("t",),
    b"bytes",
    Markup("<b>bold</b>"),
    decimal.Decimal("1.10"),
    datetime.date(2026, 12, 3),
    Shown(),
    Tagged("inner"),
]


def jinja(source: str, values: dict[str, Any]) -> str:
    return render._ENV.from_string(source).render(**values)


@pytest.mark.parametrize("source", PLAIN)
def test_plain_templates_render_as_jinja_does(source: str) -> None:
    plain = PlainTemplate.of(render._ENV, source)
    assert plain is not None, source
    for a, b in itertools.product(VALUES, VALUES[::3]):
        values = {"a": a, "b": b}
        assert plain.render(values) == jinja(source, values), (source, a, b)


@pytest.mark.parametrize("source", NOT_PLAIN)
def test_templates_with_more_than_names_go_to_jinja(source: str) -> None:
    assert PlainTemplate.of(render._ENV, source) is None


def test_a_missing_name_is_left_to_jinja() -> None:
    plain = PlainTemplate.of(render._ENV, "{{ a }} {{ range }}")
    assert plain is not None
    with pytest.raises(KeyError):
        plain.render({"a": 1})  # ``range`` is a Jinja global: only Jinja knows what it renders
    assert plain.render({"a": 1, "range": "r"}) == jinja("{{ a }} {{ range }}", {"a": 1, "range": "r"})
    builder = RequestBuilder(template="{{ a }} {{ range }} {{ dict }}", model="m")
    item = builder.render_row(1, {"a": "x", "dict": "d"})
    assert isinstance(item, LLMRequest)
    assert item.messages[0].content == jinja("{{ a }} {{ range }} {{ dict }}", {"a": "x", "dict": "d"})


def test_an_environment_that_changes_output_is_not_shortcut() -> None:
    assert PlainTemplate.of(jinja2.Environment(finalize=lambda v: v), "{{ a }}") is None
    assert PlainTemplate.of(jinja2.Environment(autoescape=True), "{{ a }}") is None
    assert PlainTemplate.of(jinja2.Environment(), "{{ a }}") is not None


# ----------------------------------------------------------------------------- RequestBuilder


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, (text, topic) in enumerate(itertools.product(VALUES, VALUES[::4]), start=1):
        rows.append({"id": f"r{i}", "text": text, "topic": topic, "n": i})
    rows.append({"id": "no-topic", "text": "x", "n": 0})  # one row lacks a name: a reject
    rows.append({"id": "broken", "text": Broken(), "topic": "t", "n": 0})  # str() raises: Jinja decides
    return rows


def _outcome(builder: RequestBuilder, rows: list[dict[str, Any]]) -> list[str]:
    """Every item as JSON (requests with their row), or the exception that ended rendering."""
    seen: list[str] = []
    try:
        for number, row in enumerate(rows, start=1):
            try:
                item = builder.render_row(number, row)
            except Exception as exc:  # compared, not swallowed
                seen.append(f"raised {type(exc).__name__}: {exc}")
                continue
            if type(item) is ShapedRequest:  # the request it stands for
                item = item.request()
            if isinstance(item, LLMRequest):
                seen.append(f"{item.row} {item.model_dump_json()}")
            else:
                assert isinstance(item, RejectedRow)
                seen.append(f"reject {item.model_dump_json()}")
        builder.check_variables()
    except TemplateVariableError as exc:
        seen.append(f"variables: {exc}")
    return seen


BUILDERS: list[dict[str, Any]] = [
    {"template": "Ticket {{ n }} about {{ topic }}:\n{{ text }}", "system": "About {{ topic }}."},
    {"template": "{{ text }}", "system": ["Fixed.", "On {{ topic }}", ""], "cache_system_prompt": True},
    {"template": "{{ text }} {{ topic }}", "render_missing_as_empty": True, "system": "  "},
    {"template": "{{ text }} / {{ topic }}", "kind": "embedding", "system": "{{ absent }}"},
    {"template": "{{ text }} {{ absent_everywhere }}"},
    {"template": "{{ text }}", "id_field": "id", "columns": {"model": "topic"}},
    {"template": "{{ text | string }} {{ topic }}"},  # Jinja on both sides: the control
]


@pytest.mark.parametrize("options", BUILDERS)
def test_builder_shortcut_gives_jinjas_requests_rejects_and_errors(options: dict[str, Any]) -> None:
    options = {"model": "gpt-4o-mini", "max_tokens": 16, **options}
    fast = RequestBuilder(**options)
    slow = RequestBuilder(**options)
    slow._plain = None  # every row through Jinja, as before the shortcut
    rows = _rows()
    assert _outcome(fast, rows) == _outcome(slow, rows)


def test_plain_rows_do_not_build_a_jinja_context(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = RequestBuilder(template="Ticket {{ n }}: {{ text }}", system="Fixed {{ n }}", model="m")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Jinja rendered a plain row")

    monkeypatch.setattr(jinja2.Template, "render", refuse)
    item = builder.render_row(1, {"n": 3, "text": "late"})
    assert isinstance(item, LLMRequest)
    assert item.messages[0].content == "Ticket 3: late" and item.system == "Fixed 3"


def test_odd_row_keys_fall_back_to_jinja() -> None:
    fast = RequestBuilder(template="{{ text }}", model="m")
    slow = RequestBuilder(template="{{ text }}", model="m")
    slow._plain = None
    rows: list[dict[Any, Any]] = [{"text": "a"}, {"text": "b", "self": "me"}, {"text": "c", 1: "one"}]
    assert _outcome(fast, rows) == _outcome(slow, rows)
    assert fast._columns == slow._columns
