"""Whether two code trees write the same submit files for the same rows, byte for byte.

Runs the core path (rows → ``RequestBuilder.render`` → ``submit_run`` against the emulator, then
``collect_run`` and a second, cache-warm ``submit_run``) once per code tree, each in a child
process with that tree first on ``PYTHONPATH``, and compares what the runs wrote: the request
part files and their ids sidecars, ``rejects.jsonl``, ``cached.jsonl``, ``cache_keys.jsonl``,
the ledger's attempt 1 (fingerprints, counts, chunks, estimate), the run handle's counts and the
manifest. The wire-id token of each run folder is fixed, so the part files do not differ by it;
what differs between two runs of one tree by nature (timestamps, batch and file ids the emulator
makes up, the cache's ``stored_at``) is left out of the comparison.

The scenarios cover the prompt template (plain ``{{ name }}`` substitutions and templates Jinja
must render: filters, conditions, attribute access), system templates, blank and missing values,
``render_missing_as_empty``, duplicates, per-row model columns, unknown models, embeddings,
Anthropic system blocks with prompt caching, and prompt strings as ``@task.batch_llm`` hands
them over.

    .venv/bin/python bench/submit_outputs.py --baseline /path/to/other/checkout --rows 3000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
TOKEN = "0123456789ab"
SYSTEM = "Classify the ticket as positive, neutral or negative. Answer with one word."
VOLATILE = frozenset(
    {"created_at", "intent_at", "stored_at", "batch", "batch_id", "batch_ids", "batches", "input_file_id",
     "id", "collected_at", "submitted_at", "ended_at", "started_at", "expires_at", "elapsed_s", "run_path",
     "raw", "updated_at", "finished_at", "cache_path", "results_path", "errors_path", "rejects_path",
     "wall_s", "duration_s", "written_at"}
)
"""Keys whose values differ between two runs of the same code (ids and times the run makes up)."""
SKIPPED = ("run.json", "claims/", "calibration", ".lock", "history", "cache/", "_index/", "batches.json")
"""Files that hold only ownership, claims and timing, and the cache's own files (named by the time
they were written; what the cache answers is compared through ``cached.jsonl``)."""


# ----------------------------------------------------------------------------- child side


VALUES: list[Any] = [
    "plain", "ünïcødé ✓ 日本語", "  padded  ", "line\nbreak", "tab\there", 0, 1, -7, 3.5, 1e16, 2.0,
    float("inf"), True, False, [1, "a"], {"k": "v"}, "{{ not a template }}", "'quoted' \"double\"",
    "\\backslash", "emoji 🎉", "\r\nwindows", "x" * 300,
]
BLANKS: list[Any] = [None, "", "   ", float("nan")]


def _rows(count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(count):
        value = VALUES[i % len(VALUES)]
        topic = VALUES[(i * 7) % len(VALUES)]
        row: dict[str, Any] = {"id": f"t-{i:05d}", "text": value, "n": i, "topic": topic}
        if i % 97 == 5:
            row["text"] = BLANKS[(i // 97) % len(BLANKS)]
        if i % 89 == 3:
            del row["topic"]  # a name the template reads is missing from this row only
        if i % 113 == 7:
            row["id"] = f"t-{i - 1:05d}"  # a duplicate custom_id
        if i % 131 == 11:
            row["model_col"] = "gpt-4.1-nano" if i % 2 else "gpt-not-a-model-7"
        rows.append(row)
    return rows


def _scenarios(count: int) -> list[dict[str, Any]]:
    rows = _rows(count)
    return [
        {"name": "plain-template", "provider": "openai", "rows": rows, "builder": {
            "template": "Ticket {{ n }} about {{topic}}:\n{{ text }}\r\nEnd {# a comment #}{{- text -}}  .\n",
            "system": "You answer about {{ topic }}.", "model": "gpt-4o-mini", "max_tokens": 16,
            "columns": {"model": "model_col"}}},
        {"name": "plain-template-empty", "provider": "openai", "rows": rows, "builder": {
            "template": "{% raw %}{{ raw }}{% endraw %} {{ text }} / {{ topic }}", "system": SYSTEM,
            "model": "gpt-4o-mini", "max_tokens": 16, "render_missing_as_empty": True, "id_field": "id"}},
        {"name": "jinja-template", "provider": "openai", "rows": rows, "builder": {
            "template": "{% if n is even %}Even{% else %}Odd{% endif %} {{ text | string | upper }} "
            "{{ topic }} {{ n + 1 }} {{ range(2) | list }} {{ dict }}",
            "model": "gpt-4o-mini", "max_tokens": 16}},
        {"name": "embedding", "provider": "openai", "rows": rows, "builder": {
            "template": "{{ text }}", "system": "{{ absent }}", "model": "text-embedding-3-small",
            "kind": "embedding"}},
        {"name": "anthropic-blocks", "provider": "anthropic", "rows": rows, "builder": {
            "template": "{{ text }} ({{ n }})", "system": [SYSTEM, "Topic: {{ topic }}"],
            "model": "claude-haiku-4-5", "max_tokens": 32, "cache_system_prompt": True}},
        {"name": "prompt-strings", "provider": "openai", "prompts": [
            f"Ticket {i}: {VALUES[i % len(VALUES)]}" for i in range(count)], "builder": {
            "model": "gpt-4o-mini", "max_tokens": 16}},
    ]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _file_digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in (".jsonl",) and path.name in ("cached.jsonl", "results.jsonl", "errors.jsonl"):
        lines = [json.dumps(_strip(json.loads(line)), sort_keys=True) for line in data.splitlines() if line]
        data = "\n".join(sorted(lines)).encode()  # in the order the provider answered
    elif path.suffix == ".json":
        data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def _folder_digests(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or any(part in relative for part in SKIPPED):
            continue
        if path.name == "ledger.json":
            ledger = json.loads(path.read_text())
            data = json.dumps(_strip(ledger.get("attempts", {})), sort_keys=True).encode()
            found[relative] = hashlib.sha256(data).hexdigest()
            continue
        found[relative] = _file_digest(path)
    return found


async def _child_run(count: int, out: Path) -> dict[str, Any]:
    import secrets

    secrets.token_hex = lambda nbytes=None: TOKEN  # one wire-id token for every run folder

    from batch_provider.backends.registry import create_backend
    from batch_provider.core.cache import ResultCache
    from batch_provider.core.collection import collect_run
    from batch_provider.core.ledger import RunKey
    from batch_provider.core.records import iter_list
    from batch_provider.core.render import RequestBuilder
    from batch_provider.core.rundir import run_directory
    from batch_provider.core.submission import submit_run
    from batch_provider.core.watch import watch_batches
    from batch_provider.decorators.batch_llm import rows_from_return
    from batch_provider.emulator.process import running_emulator

    report: dict[str, Any] = {}
    with running_emulator(time_factor=600.0) as emu:
        for scenario in _scenarios(count):
            name, provider = scenario["name"], scenario["provider"]
            base = f"{emu.base_url}/v1" if provider == "openai" else emu.base_url
            cache = ResultCache(out / name / "cache")
            handles = {}
            async with create_backend(provider, api_key="k", base_url=base) as backend:
                for run_id in ("cold", "warm"):
                    if "prompts" in scenario:
                        rows = rows_from_return(scenario["prompts"], kind="chat", system=SYSTEM)
                    else:
                        rows = scenario["rows"]
                    builder = RequestBuilder(**scenario["builder"])
                    run_dir = run_directory(out / name, dag_id="d", run_id=run_id)
                    key = RunKey(dag_id="d", task_id="submit", run_id=run_id)
                    try:
                        handle = await submit_run(
                            backend, builder.render(iter_list(rows)), run_dir, run_key=key, conn_id=None,
                            cache=cache, max_requests_per_batch=max(1, count // 3),
                            allow_unknown_models=False,
                        )
                    except Exception as exc:  # the same refusal on both sides is a match too
                        handles[run_id] = {"error": f"{type(exc).__name__}: {exc}"}
                        continue
                    handles[run_id] = _strip(handle.model_dump(mode="json"))
                    if run_id == "cold":
                        emu.advance(2 * 86400)
                        await watch_batches(
                            backend, handle.batch_ids, deadline=None, poll_interval_min=0.05,
                            poll_interval_max=0.2,
                        )
                        await collect_run(backend, handle, run_dir, cache=cache)
            report[name] = {"handles": handles, "files": _folder_digests(out / name)}
    return report


def _child(count: int, out: Path, report: Path) -> None:
    import batch_provider

    result = {"code": batch_provider.__file__, "scenarios": asyncio.run(_child_run(count, out))}
    report.write_text(json.dumps(result, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- parent side


def _run_tree(root: Path, count: int, work: Path, label: str) -> dict[str, Any]:
    out, report = work / "run", work / f"{label}.json"  # one path for both: the manifests name it
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run(
        [sys.executable, str(HERE), "--child", "--rows", str(count), "--out", str(out),
         "--report", str(report)],
        check=True, env=env, cwd=str(work),
    )
    out.rename(work / label)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="the other checkout's root")
    parser.add_argument("--candidate", type=Path, default=REPO, help="default: this checkout")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--keep", type=Path, help="write both runs' folders here and keep them")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.rows, args.out, args.report)
        return
    if args.baseline is None:
        parser.error("--baseline is required")
    work = args.keep or Path(tempfile.mkdtemp(prefix="submit-outputs-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = {label: _run_tree(root.resolve(), args.rows, work, label)
            for label, root in (("baseline", args.baseline), ("candidate", args.candidate))}
    for label, run in runs.items():
        print(f"{label}: {run['code']}")
    base, cand = runs["baseline"]["scenarios"], runs["candidate"]["scenarios"]
    differences = 0
    for name in base:
        b, c = base[name], cand.get(name, {})
        files = sorted(set(b["files"]) | set(c.get("files", {})))
        same = [f for f in files if b["files"].get(f) == c.get("files", {}).get(f)]
        for f in files:
            if f not in same:
                differences += 1
                print(f"  DIFFERENT {name}/{f}")
        if b["handles"] != c.get("handles"):
            differences += 1
            print(f"  DIFFERENT {name}: run handles {b['handles']} != {c.get('handles')}")
        print(f"{name}: {len(same)}/{len(files)} files identical")
    print("all identical" if not differences else f"{differences} difference(s); folders in {work}")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
