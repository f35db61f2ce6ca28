"""Fixtures for the emulator's own tests: one emulator per module at time factor 1, driven by
``/_emu/advance`` so every transition is reached on purpose, not by waiting."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from batch_provider.emulator.process import EmulatorProcess, running_emulator

KEY = "sk-emulator-test"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=1.0, seed=7) as proc:
        yield proc
        log = proc.log_tail(20_000)
        assert "Traceback" not in log, f"the emulator logged a server-side error:\n{log}"


@pytest.fixture(autouse=True)
def _clear_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "emu" in request.fixturenames:
        request.getfixturevalue("emu").clear_faults()


@pytest.fixture
def oai(emu: EmulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{emu.base_url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def anth(emu: EmulatorProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emu.base_url, api_key=KEY, max_retries=0)
