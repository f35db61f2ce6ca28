"""Invalid structured answers on demand: the directive, the token, server-wide, deterministic in
the seed, and only JSON answers touched."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
from emu_helpers import chat_line, create, read_jsonl

from batch_provider.emulator.faults import BatchFaults, parse_batch_faults, parse_custom_id
from batch_provider.emulator.invalid_answers import KINDS, corrupt_text, corrupt_value, invalid_kind
from batch_provider.emulator.process import EmulatorProcess

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "v", "schema": SCHEMA, "strict": True}}


def _valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value.get("label"), str) and isinstance(value.get("score"), int | float)


def test_directive_token_and_merge() -> None:
    assert parse_batch_faults("invalid_output=0.25").invalid_output == 0.25
    assert parse_custom_id("emu-invalid30-x")[1].invalid_output == 0.3
    server = BatchFaults(invalid_output=0.1)
    assert server.merged(BatchFaults()).invalid_output == 0.1
    assert server.merged(BatchFaults(invalid_output=0.5)).invalid_output == 0.5
    assert BatchFaults.from_json(server.to_json()) == server


def test_draws_are_deterministic_and_near_the_share() -> None:
    faults = BatchFaults(invalid_output=0.3)
    draws = [invalid_kind(7, f"id-{n}", faults) for n in range(2000)]
    assert draws == [invalid_kind(7, f"id-{n}", faults) for n in range(2000)]
    assert draws != [invalid_kind(8, f"id-{n}", faults) for n in range(2000)]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.26 < share < 0.34 and {d for d in draws if d} == set(KINDS)
    assert invalid_kind(7, "x", BatchFaults()) is None


def test_each_kind_breaks_a_valid_answer() -> None:
    text = '{"label":"ok","score":0.5}'
    assert all(not _valid(corrupt_text(text, kind)) for kind in KINDS)
    assert corrupt_text("plain prose", "broken_json") == "plain prose", "only JSON is touched"
    assert corrupt_value({"label": "ok", "score": 1}, "broken_json") == {"score": 1}


def test_openai_batch_directive(emu: EmulatorProcess, oai: openai.OpenAI) -> None:
    lines = [chat_line(f"r{n}", response_format=FORMAT) for n in range(40)]
    batch = create(oai, lines, faults="invalid_output=0.5")
    emu.advance(5000)
    out = read_jsonl(oai, oai.batches.retrieve(batch.id).output_file_id)
    texts = [x["response"]["body"]["choices"][0]["message"]["content"] for x in out]
    bad = [t for t in texts if not _valid(t)]
    assert len(out) == 40 and 8 <= len(bad) <= 32, "answered (status 200), some of them invalid"
    plain = create(oai, [chat_line(f"p{n}") for n in range(5)], faults="invalid_output=1")
    emu.advance(5000)
    prose = read_jsonl(oai, oai.batches.retrieve(plain.id).output_file_id)
    assert all(x["response"]["status_code"] == 200 for x in prose), "prose answers are untouched"


def test_anthropic_server_wide(emu: EmulatorProcess, anth: anthropic.Anthropic) -> None:
    emu.set_faults({"batch_faults": "invalid_output=1"})
    requests = [
        {
            "custom_id": f"a{n}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "rate"}],
                "output_format": {"type": "json_schema", "schema": SCHEMA},
            },
        }
        for n in range(6)
    ]
    batch = anth.messages.batches.create(requests=requests)
    emu.advance(5000)
    for _ in range(50):
        if anth.messages.batches.retrieve(batch.id).processing_status == "ended":
            break
        time.sleep(0.05)
    results = list(anth.messages.batches.results(batch.id))
    assert len(results) == 6 and all(r.result.type == "succeeded" for r in results)
    assert not any(_valid(r.result.message.content[0].text) for r in results)


@pytest.mark.parametrize("share", ["1.5", "x"])
def test_a_bad_share_is_refused(share: str) -> None:
    with pytest.raises(ValueError, match="invalid_output"):
        parse_batch_faults(f"invalid_output={share}")
