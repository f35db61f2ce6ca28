"""Per-row model, system prompt, max_tokens and temperature through named columns: OpenAI splits
one model per batch, Anthropic mixes models in one batch; the estimate and the manifest show
usage and cost per model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rel_support import assert_every_row_once, backend_for, wait_until_ended
from run_support import sent_requests

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run

MODELS = {
    "openai": ("gpt-4o-mini", "gpt-4o"),
    "anthropic": ("claude-haiku-4-5", "claude-sonnet-4-5"),
}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_rows_choose_their_model_and_costs_are_per_model(
    provider: str, bedrock_emulator: Any, tmp_path: Path
) -> None:
    emu = bedrock_emulator
    small, large = MODELS[provider]
    data = [
        {
            "id": f"m-{n:02d}",
            "text": f"row {n}",
            "model": large if n % 3 == 0 else small,
            "persona": "You are terse." if n % 2 else None,  # blank: the task's system prompt
            "limit": 20 + n,
            "temp": 0.1 * (n % 4),
        }
        for n in range(12)
    ]
    run_dir = run_directory(tmp_path, dag_id="mm", run_id=f"mm__{provider}")
    key = RunKey(dag_id="mm", task_id="submit", run_id=f"mm__{provider}")
    builder = RequestBuilder(
        template="Say: {{ text }}",
        model=small,
        system="Default system.",
        max_tokens=64,
        columns={"model": "model", "system": "persona", "max_tokens": "limit", "temperature": "temp"},
    )
    async with backend_for(provider, emu) as backend:
        handle = await submit_run(
            backend, builder.render(iter_list(data)), run_dir, run_key=key, conn_id=None
        )
        await wait_until_ended(backend, handle.batch_ids, emu)
        await collect_run(backend, handle, run_dir)
    if provider == "openai":
        assert sorted(ref.model for ref in handle.batches) == sorted([small, large]), "one model per batch"
    else:
        assert len(handle.batches) == 1, "Anthropic batches mix models"
    lines = sent_requests(run_dir.requests_dir(1))
    bodies = [line.get("body") or line.get("params") for line in lines]
    assert sorted(b["model"] for b in bodies) == sorted(d["model"] for d in data)
    limits = {b.get("max_completion_tokens") or b.get("max_tokens") for b in bodies}
    assert limits == {20 + n for n in range(12)}
    text = json.dumps(bodies)
    assert text.count("You are terse.") == 6 and text.count("Default system.") == 6
    manifest = assert_every_row_once(run_dir, [d["id"] for d in data], final=False)
    costs = manifest["costs_by_model"]
    assert set(costs) == {small, large} and set(manifest["models"]) == {small, large}
    assert all(c["cost"]["batch_usd"] > 0 and c["usage"]["output_tokens"] > 0 for c in costs.values())
    total = sum(c["cost"]["batch_usd"] for c in costs.values())
    assert total == pytest.approx(manifest["cost"]["batch_usd"], rel=1e-6)
    estimate = Ledger.load(run_dir).attempts[1].estimate
    assert set(estimate["models"]) == {small, large}, "each request is estimated at its own model"


async def test_a_bad_value_in_a_column_rejects_that_row(tmp_path: Path) -> None:
    builder = RequestBuilder(template="{{ t }}", model="m", columns={"max_tokens": "limit"})
    items = list(builder.render(iter_list([{"t": "a", "limit": "many"}, {"t": "b", "limit": 5}])))
    assert items[0].field == "max_tokens" and "row 1" in items[0].reason
    assert items[1].max_tokens == 5
    with pytest.raises(ValueError, match="per-row columns can set"):
        RequestBuilder(template="x", columns={"stop": "s"})
