"""output_type on the submit operator: checked when the DAG is parsed, kept as JSON (schema and
import path) so the DAG serialises, and its options reach the request builder."""

from __future__ import annotations

from datetime import datetime

import pytest
from airflow.sdk import DAG
from pydantic import BaseModel

from batch_provider.operators import SubmitBatchOperator
from batch_provider.task_group import llm_batch_group


class Ticket(BaseModel):
    category: str
    urgent: bool


def test_output_type_is_kept_as_json_and_the_dag_serialises() -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("ot", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        llm_batch_group(
            "g",
            provider="openai",
            records=[{"t": "x"}],
            prompt_template="{{ t }}",
            model="gpt-4o-mini",
            output_type=list[Ticket],
            retry_invalid_output=2,
            model_column="model",
        )
    submit = dag.task_dict["g.submit"]
    spec = submit.output_spec
    assert spec["import_path"] == f"{__name__}:Ticket" and spec["wrapped"] and spec["is_list"]
    assert spec["retry_invalid_output"] == 2 and submit.row_columns == {"model": "model"}
    back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert "g.submit" in back.task_dict
    builder = submit._builder({"params": {}})
    assert builder.response_schema == spec["json_schema"] and builder.columns == {"model": "model"}


def test_response_schema_is_an_alias_and_both_are_refused() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    op = SubmitBatchOperator(task_id="s", records=[], prompt_template="x", response_schema=schema)
    assert op.output_spec["json_schema"] == schema and op.output_spec["import_path"] is None
    with pytest.raises(ValueError, match="not both"):
        SubmitBatchOperator(
            task_id="s2", records=[], prompt_template="x", response_schema=schema, output_type=Ticket
        )
    with pytest.raises(TypeError, match="pydantic model"):
        SubmitBatchOperator(task_id="s3", records=[], prompt_template="x", output_type=42)
