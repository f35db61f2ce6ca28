"""Bad input, one fixture per kind (``tests/fixtures/bad_inputs/cases.json``), through the
SubmitBatchOperator against the emulator: each gives a clear error naming what is wrong (or
rejects exactly the bad rows, naming row and field), nothing is paid for bad rows, and good rows
still go through."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from rel_support import MODELS, base_url, read_lines
from run_support import part_files, part_text

from batch_provider.core.wire_ids import read_sidecar_file
from batch_provider.emulator.process import running_emulator

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "bad_inputs"
CASES = json.loads((CORPUS / "cases.json").read_text())["cases"]
CANARY = "sk-canary-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def emu():
    with running_emulator(time_factor=600.0) as emulator:
        yield emulator


@pytest.fixture
def conns(emu, monkeypatch):
    for provider in ("openai", "anthropic"):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_REL_{provider.upper()}",
            json.dumps({"conn_type": f"llm_{provider}", "host": base_url(provider, emu), "password": CANARY}),
        )
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_NOKEY",
        json.dumps({"conn_type": "llm_anthropic", "host": base_url("anthropic", emu)}),
    )
    return emu


def counters(emu: Any, provider: str) -> tuple[int, int]:
    stats = emu.stats()
    return int(stats["batches_created"].get(provider, 0)), int(stats["files_uploaded"])


def sent_ids(run_dir: Path) -> list[str]:
    """Row ids of the sent requests (the wire carries wire ids; each part's sidecar maps them)."""
    ids = []
    for part in part_files(run_dir / "attempt-1" / "requests"):
        sidecar = read_sidecar_file(part.with_suffix(".ids"))
        assert sidecar is not None and len(sidecar.rows) == len(part_text(part).splitlines())
        ids += sidecar.row_ids()
    return ids


def models_per_part(run_dir: Path) -> list[set[str]]:
    return [
        {json.loads(line)["body"]["model"] for line in part_text(part).splitlines() if line.strip()}
        for part in part_files(run_dir / "attempt-1" / "requests")
    ]


def submit(case: dict[str, Any], tmp_path: Path, run_path: Path, input_path: Path) -> dict[str, Any]:
    from batch_provider.operators import SubmitBatchOperator

    options = dict(case.get("operator", {}))
    source = options.pop("input", "input_path")
    provider = "nope-ai" if case.get("setup") == "unknown_provider" else case["provider"]
    conn_id = "rel_nokey" if case.get("setup") == "no_key" else f"rel_{case['provider']}"
    if source == "input_path":
        options.setdefault("model", MODELS[case["provider"]])
    options.setdefault("max_tokens", 16)
    context = {
        "ti": mock.MagicMock(dag_id="bad_inputs", task_id="submit", map_index=-1),
        "run_id": f"case__{case['name']}",
        "params": {},
    }
    if case.get("via") == "core":
        return asyncio.run(core_submit(case, options, run_path, input_path, context))
    op = SubmitBatchOperator(
        task_id="submit",
        provider=provider,
        conn_id=conn_id,
        run_path=str(run_path),
        **{source: str(input_path)},
        **options,
    )
    return op.execute(context)


async def core_submit(
    case: dict[str, Any], options: dict[str, Any], run_path: Path, input_path: Path, context: dict
) -> dict[str, Any]:
    from batch_provider.backends.registry import create_backend
    from batch_provider.core.ledger import RunKey
    from batch_provider.core.render import RequestBuilder
    from batch_provider.core.rundir import run_directory
    from batch_provider.core.submission import submit_run
    from batch_provider.operators._common import as_storage_path
    from batch_provider.operators.batch import iter_input_rows

    emu_url = json.loads(__import__("os").environ[f"AIRFLOW_CONN_REL_{case['provider'].upper()}"])["host"]
    key = "" if case.get("setup") == "rejected_key" else CANARY
    builder = RequestBuilder(
        template=options.get("prompt_template"), model=options.get("model"), max_tokens=options["max_tokens"]
    )
    run_dir = run_directory(run_path, dag_id="bad_inputs", run_id=context["run_id"], group="submit")
    async with create_backend(case["provider"], api_key=key, base_url=emu_url) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_input_rows(as_storage_path(input_path))),
            run_dir,
            run_key=RunKey(dag_id="bad_inputs", task_id="submit", run_id=context["run_id"]),
            conn_id=None,
            max_cost_usd=options.get("max_cost_usd"),
        )
    return handle.model_dump(mode="json")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case: dict[str, Any], conns: Any, tmp_path: Path) -> None:
    emu = conns
    provider = case["provider"]
    expect = case["expect"]
    run_path = tmp_path / "runs"
    input_path = CORPUS / case["file"] if case["file"] else tmp_path / "no-such-input.jsonl"
    setup = case.get("setup")
    if setup == "read_only_run_path":
        run_path = tmp_path / "read-only-runs"
        run_path.mkdir()
        subprocess.run(["chattr", "+i", str(run_path)], check=True)  # read-only even for root
    if setup == "other_ledger":
        submit(case, tmp_path, run_path, CORPUS / "good.jsonl")  # the earlier input of this task
    before = counters(emu, provider)
    try:
        if "error" in expect:
            with pytest.raises(Exception) as caught:
                submit(case, tmp_path, run_path, input_path)
            names = [cls.__name__ for cls in type(caught.value).__mro__]
            message = str(caught.value)
            assert expect["error"] in names, f"{type(caught.value).__name__}: {message}"
            for fragment in expect["message"]:
                assert fragment in message, f"{fragment!r} not in {message!r}"
            assert CANARY not in message
            assert counters(emu, provider) == before, "something was uploaded or created for a bad input"
            return
        handle = submit(case, tmp_path, run_path, input_path)
    finally:
        if setup == "read_only_run_path":
            subprocess.run(["chattr", "-i", str(run_path)], check=True)

    run_dir = Path(handle["run_path"].removeprefix("file://"))
    rejects = read_lines(run_dir / "rejects.jsonl")
    # what was sent and paid for: only the good rows, in the expected number of batches
    assert sorted(sent_ids(run_dir)) == sorted(expect["sent"])
    assert len(handle["batches"]) == expect["batches"]
    assert counters(emu, provider)[0] - before[0] == expect["batches"]
    if expect.get("one_model_per_batch"):
        models = models_per_part(run_dir)
        assert len(models) == expect["batches"] and all(len(m) == 1 for m in models), models
    # each bad row rejected once, with the field and reason ...
    assert len(rejects) == len(expect["rejects"]), rejects
    assert handle["counts"]["rejected"] == len(expect["rejects"])
    assert handle["counts"]["submitted"] == len(expect["sent"])
    remaining = list(rejects)
    for want in expect["rejects"]:
        match = [
            r
            for r in remaining
            if r["error"].get("field") == want["field"] and want["message"] in r["error"]["message"]
        ]
        assert match, f"no reject with field {want['field']!r} and {want['message']!r}: {remaining}"
        remaining.remove(match[0])
    # ... naming the input row it came from (1-based, as in the file)
    assert sorted(r.get("row") for r in rejects) == sorted(w["row"] for w in expect["rejects"]), [
        (r.get("row"), r["custom_id"][:20], r["error"]["message"][:60]) for r in rejects
    ]
    assert CANARY not in json.dumps(handle) and CANARY not in json.dumps(rejects)


def test_operator_error_traceback_has_no_unrelated_exception(conns: Any, tmp_path: Path) -> None:
    """The task log shows the whole chain: an input error must not be shown as raised "during
    handling of" an unrelated exception, which sends the reader after the wrong problem."""
    import traceback

    case = next(c for c in CASES if c["name"] == "empty_file")
    with pytest.raises(Exception) as caught:
        submit(case, tmp_path, tmp_path / "runs", CORPUS / case["file"])
    shown = "".join(traceback.format_exception(caught.value))
    assert "holds no rows" in shown
    assert "During handling of the above exception" not in shown, shown
