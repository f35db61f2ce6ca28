"""Task-wide mistakes and null values through the SubmitBatchOperator against the emulator: each
mistake fails the task with one clear error before any batch is created (``/_emu/stats``), without
Airflow retries; a null or empty value the template uses rejects its row, naming row and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from run_support import part_files, part_text

from batch_provider.emulator.process import running_emulator

MODELS = {"openai": "gpt-6-luna", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


@pytest.fixture(scope="module")
def emu():
    with running_emulator(time_factor=600.0) as emulator:
        yield emulator


@pytest.fixture
def conns(emu, monkeypatch):
    for provider in MODELS:
        host = f"{emu.base_url}/v1" if provider == "openai" else emu.base_url
        monkeypatch.setenv(
            f"AIRFLOW_CONN_FC_{provider.upper()}",
            json.dumps({"conn_type": f"llm_{provider}", "host": host, "password": "k"}),
        )
    return emu


def created(emu: Any) -> int:
    stats = emu.stats()
    return sum(int(v) for v in stats["batches_created"].values()) + int(stats["files_uploaded"])


def submit(tmp_path: Path, provider: str, run_id: str, **options: Any) -> dict[str, Any]:
    from batch_provider.operators import SubmitBatchOperator

    options.setdefault("model", MODELS[provider])
    options.setdefault("prompt_template", "Summarise: {{ text }}")
    op = SubmitBatchOperator(
        task_id="submit",
        provider=provider,
        conn_id=f"fc_{provider}",
        run_path=str(tmp_path / "runs"),
        **options,
    )
    context = {
        "ti": mock.MagicMock(dag_id="fail_closed", task_id="submit", map_index=-1),
        "run_id": run_id,
        "params": {},
    }
    return op.execute(context)


def refused(emu: Any, tmp_path: Path, provider: str, run_id: str, **options: Any) -> BaseException:
    before = created(emu)
    with pytest.raises(AirflowFailException) as caught:
        submit(tmp_path, provider, run_id, **options)
    assert created(emu) == before, "a batch or file was created for a task-wide mistake"
    return caught.value


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sent(handle: dict[str, Any]) -> str:
    folder = Path(handle["run_path"].removeprefix("file://"))
    return "".join(part_text(p) for p in part_files(folder / "attempt-1" / "requests"))


# ----------------------------------------------------------------------------- task-wide mistakes


def test_template_column_no_row_has_fails_with_did_you_mean(conns: Any, tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "title": f"ticket {i}"} for i in range(5)]
    error = refused(
        conns, tmp_path, "openai", "titel", records=records, prompt_template="{{ titel }}", max_tokens=16
    )
    message = str(error)
    assert "'titel'" in message and "did you mean 'title'" in message and "nothing was sent" in message
    assert "rejected on 5 rows" in message


def test_anthropic_without_max_tokens_fails_before_reading_rows(conns: Any, tmp_path: Path) -> None:
    records = [{"id": "a1", "text": "hello"}, {"id": "a2", "text": "world"}]
    error = refused(conns, tmp_path, "anthropic", "no-max-tokens", records=records)
    assert "'max_tokens'" in str(error) and "anthropic" in str(error) and "max_tokens=" in str(error)


def test_an_option_the_provider_refuses_fails_the_task(conns: Any, tmp_path: Path) -> None:
    records = [{"id": "e1", "text": "embed me"}]
    error = refused(conns, tmp_path, "anthropic", "embed", records=records, kind="embedding", max_tokens=16)
    assert "'kind'" in str(error) and "embeddings" in str(error)


def test_every_row_rejected_fails_by_default_with_top_reasons(conns: Any, tmp_path: Path) -> None:
    records = [{"id": f"n{i}", "text": None} for i in range(4)]
    error = refused(conns, tmp_path, "openai", "all-null", records=records, max_tokens=16)
    message = str(error)
    assert "4 of 4" in message and "every row was rejected" in message
    assert "4 × text: column 'text' used by the template is null" in message


def test_max_rejected_fraction_refuses_a_run_over_the_share(conns: Any, tmp_path: Path) -> None:
    records = [{"id": f"m{i}", "text": "ok" if i % 4 else None} for i in range(8)]  # 2 of 8 rejected
    error = refused(
        conns, tmp_path, "openai", "share", records=records, max_tokens=16, max_rejected_fraction=0.1
    )
    assert "2 of 8" in str(error) and "max_rejected_fraction=0.1" in str(error)
    handle = submit(
        tmp_path, "openai", "share-ok", records=records, max_tokens=16, max_rejected_fraction=0.25
    )
    assert handle["counts"]["rejected"] == 2 and handle["counts"]["submitted"] == 6


def test_max_rejected_fraction_one_lets_an_all_rejected_run_through(conns: Any, tmp_path: Path) -> None:
    records = [{"id": "z1", "text": ""}]
    before = created(conns)
    handle = submit(tmp_path, "openai", "all-ok", records=records, max_tokens=16, max_rejected_fraction=1.0)
    assert handle["counts"]["rejected"] == 1 and handle["batches"] == []
    assert created(conns) == before


# ----------------------------------------------------------------------------- null and empty values


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_null_value_rejects_the_row_naming_row_and_field(provider: str, conns: Any, tmp_path: Path) -> None:
    records = [{"id": "t1", "text": None}, {"id": "t2", "text": "a real ticket"}, {"id": "t3", "text": "  "}]
    handle = submit(tmp_path, provider, f"null-{provider}", records=records, max_tokens=16)
    body = sent(handle)
    assert "None" not in body and "a real ticket" in body
    rejects = lines(Path(handle["run_path"].removeprefix("file://")) / "rejects.jsonl")
    assert [(r["custom_id"], r["row"], r["error"]["field"]) for r in rejects] == [
        ("t1", 1, "text"),
        ("t3", 3, "text"),
    ]
    assert "row 1" in rejects[0]["error"]["message"] and "null" in rejects[0]["error"]["message"]
    assert "empty" in rejects[1]["error"]["message"]
    assert "render_missing_as_empty" in rejects[0]["error"]["message"]


def test_render_missing_as_empty_sends_the_row_with_empty_text(conns: Any, tmp_path: Path) -> None:
    records = [{"id": "t1", "text": None}, {"id": "t2", "text": "x"}]
    handle = submit(
        tmp_path, "openai", "as-empty", records=records, max_tokens=16, render_missing_as_empty=True
    )
    assert handle["counts"]["rejected"] == 0 and handle["counts"]["submitted"] == 2
    # Lines keep the rows' order (t1, t2); their custom_ids are wire ids.
    prompts = [json.loads(line)["body"]["messages"][0]["content"] for line in sent(handle).splitlines()]
    assert prompts == ["Summarise:", "Summarise: x"]


# ----------------------------------------------------------------------------- empty input, storage


def test_empty_input_is_skipped_by_default_and_fails_on_request(conns: Any, tmp_path: Path) -> None:
    from batch_provider.core.records import EmptyInputError

    empty = tmp_path / "2026-01-01.jsonl"
    empty.write_text("")
    before = created(conns)
    with pytest.raises(AirflowSkipException) as skipped:
        submit(tmp_path, "openai", "empty-skip", input_path=str(empty), max_tokens=16)
    assert "holds no rows" in str(skipped.value) and str(empty) in str(skipped.value)
    with pytest.raises(AirflowFailException) as failed:
        submit(tmp_path, "openai", "empty-fail", input_path=str(empty), max_tokens=16, on_empty="fail")
    assert isinstance(failed.value, EmptyInputError) and "on_empty='fail'" in str(failed.value)
    assert created(conns) == before


def test_missing_input_path_fails_without_retry_naming_the_path(conns: Any, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-day.jsonl"
    error = refused(conns, tmp_path, "openai", "missing", input_path=str(missing), max_tokens=16)
    assert str(missing) in str(error) and "does not exist" in str(error)


def test_unwritable_run_path_fails_without_retry_naming_the_path_and_fix(conns: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the run folder should be")
    before = created(conns)
    from batch_provider.operators import SubmitBatchOperator

    op = SubmitBatchOperator(
        task_id="submit",
        provider="openai",
        conn_id="fc_openai",
        run_path=str(blocker / "runs"),
        records=[{"id": "w1", "text": "x"}],
        prompt_template="{{ text }}",
        model=MODELS["openai"],
        max_tokens=16,
    )
    context = {"ti": mock.MagicMock(dag_id="d", task_id="submit", map_index=-1), "run_id": "w", "params": {}}
    with pytest.raises(AirflowFailException) as caught:
        op.execute(context)
    message = str(caught.value)
    assert str(blocker) in message and "writable" in message and "run_path" in message
    assert isinstance(caught.value, OSError)
    assert created(conns) == before


async def test_manifest_says_how_many_rows_were_rejected_and_why(emu: Any, tmp_path: Path) -> None:
    from batch_provider.backends.registry import create_backend
    from batch_provider.core.collection import collect_run
    from batch_provider.core.ledger import RunKey
    from batch_provider.core.records import iter_list
    from batch_provider.core.render import RequestBuilder
    from batch_provider.core.rundir import run_directory
    from batch_provider.core.submission import submit_run
    from batch_provider.core.watch import watch_batches

    records = [{"id": f"s{i}", "text": None if i < 3 else "fine"} for i in range(6)]
    records.append({"id": "s6", "body": "no text column"})
    builder = RequestBuilder(template="{{ text }}", model=MODELS["anthropic"], max_tokens=16)
    run_dir = run_directory(tmp_path, dag_id="d", run_id="summary", group="g")
    async with create_backend("anthropic", api_key="k", base_url=emu.base_url) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(records)),
            run_dir,
            run_key=RunKey(dag_id="d", task_id="s", run_id="summary"),
            conn_id=None,
        )
        emu.advance(2 * 86400)
        await watch_batches(
            backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
        )
        await collect_run(backend, handle, run_dir)
    manifest = json.loads(run_dir.manifest.read_text())
    assert manifest["rejected"] == 4 and manifest["succeeded"] == 3
    reasons = manifest["rejected_reasons"]
    assert list(reasons.values()) == [3, 1]
    assert next(iter(reasons)).startswith("text: column 'text' used by the template is null")


def test_extra_on_the_task_reaches_every_request_and_is_checked(conns: Any, tmp_path: Path) -> None:
    records = [{"id": "x1", "text": "hello"}, {"id": "x2", "text": "world"}]
    handle = submit(
        tmp_path, "anthropic", "extra", records=records, extra={"max_tokens": 24, "top_k": 5}
    )
    params = [json.loads(line)["params"] for line in sent(handle).splitlines()]
    assert [(p["max_tokens"], p["top_k"]) for p in params] == [(24, 5), (24, 5)]
    error = refused(conns, tmp_path, "anthropic", "extra-bad", records=records, extra={"max_tokens": 0})
    assert "'max_tokens'" in str(error) and "at least 1" in str(error)


def test_csv_template_column_fails_on_the_first_row(conns: Any, tmp_path: Path) -> None:
    """A CSV has one header: a template name the first row lacks fails before the rest is read."""
    data = tmp_path / "tickets.csv"
    rows = "".join(f"r{i},ticket {i}\n" for i in range(2000))
    data.write_text("id,title\n" + rows)
    error = refused(
        conns, tmp_path, "openai", "csv", input_path=str(data), prompt_template="{{ titel }}", max_tokens=16
    )
    assert "did you mean 'title'" in str(error) and "rejected on 1 row)" in str(error)
