"""output_type: the schema sent for pydantic models, TypedDicts, dataclasses, lists of them and
schema dicts; OpenAI strict mode where the schema allows it; validation at reconcile, with the
type when it can be imported and with the JSON schema when it cannot."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.core.models import (
    BatchEnding,
    BatchRef,
    BatchState,
    BatchStatus,
    ItemStatus,
    LLMRequest,
    ResultRecord,
)
from batch_provider.core.output_type import OutputValidator, output_spec, strict_allowed
from batch_provider.core.reconcile import reconcile


class Ticket(BaseModel):
    category: str
    urgent: bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    score: float


class Movie(TypedDict):
    title: str
    year: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


REF = BatchRef(provider="openai", batch_id="b", chunk_index=0, request_count=1, created_at=datetime.now(UTC))
ENDED = BatchState(
    batch_id="b", status=BatchStatus.ENDED, ending=BatchEnding.COMPLETED, native_status="completed"
)


async def _one(record: ResultRecord, validator: OutputValidator) -> ResultRecord:
    async def answers() -> AsyncIterator[ResultRecord]:
        yield record

    out = [r async for r in reconcile(REF, {record.custom_id: True}, ENDED, answers(), validator=validator)]
    assert len(out) == 1
    return out[0]


def _ok(text: str) -> ResultRecord:
    return ResultRecord(custom_id="r", status=ItemStatus.SUCCEEDED, output_text=text, finish_reason="stop")


@pytest.mark.parametrize("tp", [Ticket, Movie, Point])
def test_object_types_are_sent_as_their_schema_with_an_import_path(tp: type) -> None:
    spec = output_spec(tp)
    assert spec.json_schema["type"] == "object" and not spec.wrapped
    assert spec.import_path == f"{__name__}:{tp.__qualname__}"
    assert set(spec.json_schema["required"]) == set(spec.json_schema["properties"])


def test_a_list_is_wrapped_in_an_object_and_unwrapped_at_collect() -> None:
    spec = output_spec(list[Ticket])
    assert spec.wrapped and spec.is_list and spec.json_schema["required"] == ["items"]
    assert spec.json_schema["properties"]["items"]["type"] == "array"
    assert "Ticket" in spec.json_schema["$defs"], "$defs stay at the top, where $ref points"
    value, errors = OutputValidator(spec).check({"items": [{"category": "bug", "urgent": True}]})
    assert errors == [] and value == [{"category": "bug", "urgent": True}]
    assert OutputValidator(spec).instance(value) == [Ticket(category="bug", urgent=True)]
    _, errors = OutputValidator(spec).check([{"category": "bug", "urgent": True}])
    assert errors and "items" in errors[0]


def test_a_schema_dict_is_used_as_given() -> None:
    schema = {"type": "object", "title": "Verdict", "properties": {"label": {"type": "string"}}}
    spec = output_spec(schema)
    assert spec.json_schema == schema and spec.import_path is None and spec.name == "Verdict"
    assert OutputValidator(spec).check({"label": 3})[1] == ["label: 3 is not of type 'string'"]


def test_something_else_is_refused_naming_what_to_give() -> None:
    with pytest.raises(TypeError, match="pydantic model, TypedDict, dataclass"):
        output_spec("Ticket")


def test_openai_strict_only_where_the_schema_allows_it() -> None:
    assert strict_allowed(output_spec(Strict).json_schema)
    assert not strict_allowed(output_spec(Ticket).json_schema), "extra keys allowed: not strict"
    backend = OpenAIBackend(api_key="k")

    def format_of(tp: type) -> dict:
        request = LLMRequest(
            custom_id="c", model="gpt-4o", messages=[{"role": "user", "content": "x"}],
            response_schema=output_spec(tp).json_schema,
        )
        return json.loads(backend.encode(request).line)["body"]["response_format"]["json_schema"]

    assert format_of(Strict)["strict"] is True and format_of(Strict)["name"] == "Strict"
    assert "strict" not in format_of(Ticket)


async def test_valid_answers_carry_parsed_invalid_ones_their_errors() -> None:
    validator = OutputValidator(output_spec(Ticket))
    good = await _one(_ok('{"category": "bug", "urgent": false}'), validator)
    assert good.status is ItemStatus.SUCCEEDED and good.parsed == {"category": "bug", "urgent": False}
    bad = await _one(_ok('{"category": "bug", "urgent": "sometimes"}'), validator)
    assert bad.status is ItemStatus.INVALID_OUTPUT and bad.parsed is None
    assert bad.error.type == "output_validation" and bad.error.retryable
    assert bad.error.details == ["urgent: Input should be a valid boolean, unable to interpret input"]
    assert bad.output_text == '{"category": "bug", "urgent": "sometimes"}'
    missing = await _one(_ok('{"urgent": true}'), validator)
    assert missing.error.details == ["category: Field required"]
    tool = ResultRecord(custom_id="r", status=ItemStatus.SUCCEEDED, parsed={"urgent": 1.5})
    answered = await _one(tool, validator)
    assert answered.status is ItemStatus.INVALID_OUTPUT
    assert json.loads(answered.output_text) == {"urgent": 1.5}


def test_a_type_that_cannot_be_imported_falls_back_to_its_schema(caplog: pytest.LogCaptureFixture) -> None:
    def local() -> type:
        class Local(BaseModel):
            n: int

        return Local

    spec = output_spec(local())
    assert spec.import_path is None
    gone = output_spec(Ticket).model_copy(update={"import_path": "no_such_module_xyz:Ticket"})
    with caplog.at_level(logging.WARNING):
        validator = OutputValidator(gone)
    assert validator.type is None and "validated against its JSON schema only" in caplog.text
    assert validator.check({"category": "x", "urgent": True}) == ({"category": "x", "urgent": True}, [])
    assert validator.check({"category": "x"})[1] == ["(top): 'urgent' is a required property"]
    assert OutputValidator(spec).check({"n": "many"})[1] == ["n: 'many' is not of type 'integer'"]
