"""The emulator refuses model ids the real services do not serve, each in its own way."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from emu_helpers import chat_line, claude_request, create

from batch_provider.emulator.process import EmulatorProcess


@pytest.fixture
def served(emu: EmulatorProcess) -> Iterator[str]:
    """The emulator's model settings URL; the default list is restored afterwards."""
    url = f"{emu.base_url}/_emu/models"
    yield url
    httpx.post(url, json={"known_models": ["catalog"]}).raise_for_status()


def test_openai_batch_with_an_unknown_model_fails_validation(
    emu: EmulatorProcess, oai: openai.OpenAI
) -> None:
    bad = create(oai, [chat_line("a", model="gpt-4o-mnii"), chat_line("b", model="gpt-4o-mnii")])
    good = create(oai, [chat_line("c", model="gpt-4o-mini-2024-07-18")])
    emu.advance(31)
    failed = oai.batches.retrieve(bad.id)
    assert failed.status == "failed" and failed.errors is not None
    (error,) = failed.errors.data
    assert error.code == "model_not_found" and error.line == 1 and error.param == "body.model"
    assert error.message == "The model `gpt-4o-mnii` does not exist or you do not have access to it."
    assert oai.batches.retrieve(good.id).status == "in_progress"


def test_anthropic_request_for_an_unknown_model_errors(
    emu: EmulatorProcess, anth: anthropic.Anthropic
) -> None:
    batch = anth.messages.batches.create(
        requests=[
            claude_request("typo", model="claude-haiku-4.5"),
            claude_request("dated", model="claude-3-5-haiku-20241022"),
        ]
    )
    emu.advance(3 * 3600)
    results = {r.custom_id: r.result for r in anth.messages.batches.results(batch.id)}
    typo = results["typo"]
    assert typo.type == "errored"
    assert typo.error.error.type == "not_found_error"
    assert typo.error.error.message == "model: claude-haiku-4.5"
    assert results["dated"].type == "succeeded"


def gemini_create(emu: EmulatorProcess, model: str) -> httpx.Response:
    body = {
        "batch": {
            "displayName": "models-check",
            "inputConfig": {
                "requests": {
                    "requests": [
                        {
                            "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                            "metadata": {"key": "r1"},
                        }
                    ]
                }
            },
        }
    }
    return httpx.post(
        f"{emu.base_url}/v1beta/models/{model}:batchGenerateContent",
        json=body,
        headers={"x-goog-api-key": "k"},
    )


def test_gemini_create_for_an_unknown_model_is_not_found(emu: EmulatorProcess) -> None:
    refused = gemini_create(emu, "gemini-2.5-flsh")
    assert refused.status_code == 404 and refused.json()["error"]["status"] == "NOT_FOUND"
    assert "models/gemini-2.5-flsh is not found" in refused.json()["error"]["message"]
    assert gemini_create(emu, "gemini-2.5-flash-001").status_code == 200


def test_served_models_are_configurable(emu: EmulatorProcess, oai: openai.OpenAI, served: str) -> None:
    assert httpx.get(served).json() == {"known_models": ["catalog"]}
    httpx.post(served, json={"known_models": ["catalog", "my-finetune"]}).raise_for_status()
    own = create(oai, [chat_line("a", model="my-finetune")])
    emu.advance(31)
    assert oai.batches.retrieve(own.id).status == "in_progress"
    httpx.post(served, json={"known_models": ["gpt-6-luna"]}).raise_for_status()
    only = create(oai, [chat_line("b", model="gpt-4o-mini")])
    emu.advance(31)
    assert oai.batches.retrieve(only.id).status == "failed"
    assert httpx.post(served, json={"known_models": "everything"}).status_code == 400
