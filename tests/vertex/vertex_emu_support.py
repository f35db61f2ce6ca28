"""Constants and helpers shared by the tests of the emulator's Vertex face."""

from __future__ import annotations

import json
from typing import Any

from batch_provider.emulator.process import EmulatorProcess

PROJECT = "bp-test-project"
LOCATION = "us-central1"
INPUT_BUCKET = "bp-vertex-in"
OUTPUT_BUCKET = "bp-vertex-out"
MODEL = "gemini-2.5-flash"
TOKEN = "ya29.emulator-token"


def jobs_url(emu: EmulatorProcess, version: str = "v1") -> str:
    return f"{emu.base_url}/{version}/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def request_line(text: str, labels: dict[str, str] | None = None, **generation: Any) -> dict[str, Any]:
    """One input line ``{"request": GenerateContentRequest}``."""
    request: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if generation:
        request["generationConfig"] = generation
    if labels is not None:
        request["labels"] = labels
    return {"request": request}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def create_body(input_uri: str, output_prefix: str, name: str = "job", **extra: Any) -> dict[str, Any]:
    return {
        "displayName": name,
        "model": f"publishers/google/models/{MODEL}",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [input_uri]}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": output_prefix}},
        **extra,
    }
