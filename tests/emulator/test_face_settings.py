"""The emulator faces' run-time settings share one update/reset policy (``emulator.settings``)."""

from __future__ import annotations

import pytest

from batch_provider.emulator.bedrock.jobs import BedrockSettings
from batch_provider.emulator.gemini.state import GeminiSettings
from batch_provider.emulator.vertex.jobs import VertexSettings


@pytest.mark.parametrize("settings", [BedrockSettings(), GeminiSettings(), VertexSettings()])
def test_unknown_name_changes_nothing(settings) -> None:
    before = repr(settings)
    first = next(iter(settings.__dataclass_fields__))
    with pytest.raises(ValueError, match=f"unknown {settings.FACE} setting 'nope'"):
        settings.update({first: None, "nope": 1})
    assert repr(settings) == before


def test_values_take_the_type_of_the_field() -> None:
    bedrock = BedrockSettings()
    bedrock.update({"min_records": "10", "scheduled_seconds": 3, "require_authorization": "false"})
    assert (bedrock.min_records, bedrock.scheduled_seconds, bedrock.require_authorization) == (10, 3.0, False)
    bedrock.update({"require_authorization": "on", "s3_endpoint": "http://127.0.0.1:1"})
    assert bedrock.require_authorization is True and bedrock.s3_endpoint == "http://127.0.0.1:1"

    gemini = GeminiSettings()
    gemini.update({"partial_results": "0", "inline_max_bytes": 5.0})
    assert gemini.partial_results is False and gemini.inline_max_bytes == 5
    assert isinstance(gemini.inline_max_bytes, int)


def test_a_bad_value_changes_nothing() -> None:
    gemini = GeminiSettings()
    with pytest.raises(ValueError):
        gemini.update({"display_name_max": 7, "expire_seconds": "soon"})
    assert gemini.display_name_max == 128


def test_reset_keeps_endpoints_found_at_start() -> None:
    bedrock = BedrockSettings(s3_endpoint="http://127.0.0.1:1")
    bedrock.update({"min_records": 1, "region": "eu-west-1"})
    bedrock.restore_defaults()
    assert (bedrock.min_records, bedrock.region, bedrock.s3_endpoint) == (100, "us-east-1", "http://127.0.0.1:1")

    vertex = VertexSettings(gcs_endpoint="http://127.0.0.1:2")
    vertex.update({"max_requests": 3})
    vertex.restore_defaults()
    assert (vertex.max_requests, vertex.gcs_endpoint) == (200_000, "http://127.0.0.1:2")

    gemini = GeminiSettings()
    gemini.update({"partial_results": False})
    gemini.restore_defaults()
    assert gemini.partial_results is True
