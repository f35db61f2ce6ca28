"""Request builders shared by the emulator tests."""

from __future__ import annotations

import json
from typing import Any

import openai

MODEL = "gpt-6-luna"
CLAUDE = "claude-haiku-4-5"
ENDPOINT = "/v1/chat/completions"


def chat_line(custom_id: str, text: str = "Classify: good", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()


def upload(client: openai.OpenAI, lines: list[Any]) -> str:
    return client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch").id


def create(
    client: openai.OpenAI, lines: list[Any], endpoint: str = ENDPOINT, faults: str | None = None
) -> Any:
    metadata = {"suite": "emulator"}
    if faults:
        metadata["emu_faults"] = faults
    return client.batches.create(
        input_file_id=upload(client, lines), endpoint=endpoint, completion_window="24h", metadata=metadata
    )


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def claude_request(custom_id: str, text: str = "Summarise: hello", **params: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": CLAUDE,
            "max_tokens": 200,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }
