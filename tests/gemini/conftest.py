"""Fixtures for the Gemini tests: one emulator for the module's tests, reset settings afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from batch_provider.emulator.process import EmulatorProcess, running_emulator


@pytest.fixture(scope="session")
def gemini_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0) as emu:
        yield emu


@pytest.fixture
def emu(gemini_emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The session emulator; server-wide faults and Gemini settings are restored afterwards."""
    yield gemini_emulator
    gemini_emulator.clear_faults()
    httpx.post(
        f"{gemini_emulator.base_url}/_emu/gemini",
        json={"partial_results": True, "inline_max_bytes": 20 * 1024 * 1024},
    )
