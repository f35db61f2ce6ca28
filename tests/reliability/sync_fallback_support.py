"""A run whose batches were cut off half-way (cancelled, collected), ready for a sync fallback:
shared by the fallback tests and the child process the crash test kills."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rel_support import backend_for

from batch_provider.core.collection import collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import RunKey
from batch_provider.core.output_type import output_spec, save_output_spec
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import RunDirectory, run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import cancel_batches
from batch_provider.emulator.outputs import body_hash

ROWS = 24
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


async def cut_off_run(
    provider: str,
    emulator: Any,
    root: Path,
    run_id: str,
    *,
    output_type: Any = None,
    marker: str = "",
) -> tuple[RunHandle, RunDirectory]:
    """Submit ``ROWS`` rows in batches of 12, let about half of each run, cancel, collect. With
    ``output_type``, the rows ask for it (saved as the run's output type); ``marker`` is added
    to every prompt (an emulator directive such as ``[[emu:invalid50]]``)."""
    run_dir = run_directory(root, dag_id="sync_fallback", run_id=run_id)
    key = RunKey(dag_id="sync_fallback", task_id="submit", run_id=run_id)
    data = [{"id": f"s-{i:03d}", "text": f"long tail row {i}{marker}"} for i in range(ROWS)]
    schema = None
    if output_type is not None:
        spec = output_spec(output_type)
        save_output_spec(run_dir.root, spec)
        schema = spec.json_schema
    builder = RequestBuilder(
        template="Say {{ text }}",
        model=MODELS[provider],
        max_tokens=400 if schema else 16,
        response_schema=schema,
    )
    async with backend_for(provider, emulator) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id="sync_fb",
            max_requests_per_batch=12,
        )
        emulator.advance(30 + 600)
        await cancel_batches(backend, handle.batch_ids)
        emulator.advance(3600)
        await collect_run(backend, handle, run_dir)
    return handle, run_dir


def body_of(provider: str, line: bytes, model: str | None) -> Any:
    """The request body the emulator counts a synchronous call of this part-file line under."""
    obj = json.loads(line)
    if provider == "openai":
        return obj["body"]
    if provider == "anthropic":
        return obj["params"]
    return {"model": f"models/{model}", **obj["request"]}


def served_per_row(provider: str, emulator: Any, rows: list[Any]) -> dict[str, int]:
    """Row id → how many times the emulator answered its body synchronously."""
    served = emulator.sync_settings(bodies=True)["served_by_body"]
    return {r.row_id: served.get(str(body_hash(0, body_of(provider, r.line, r.model))), 0) for r in rows}
