"""CPU time of submit's core path, ``RequestBuilder.render`` → ``submit_run`` against the emulator,
for this checkout and optionally another one, in the same run.

Each run is a child process with its code tree first on ``PYTHONPATH``; the trees alternate
(``--repeat`` runs each) so both see the same machine. A run starts the emulator, then times only
the submit of ``--rows`` rows (process CPU seconds and wall seconds, the emulator's own process
not included). Two shapes:

- ``prompts``: prompt strings as ``@task.batch_llm`` hands them over (``{"messages", "system"}``
  rows, no template);
- ``template``: rows rendered through ``"Ticket {{ n }}: {{ text }}"`` with a system prompt.

    .venv/bin/python bench/submit_core.py --rows 50000 --repeat 3 --baseline /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
SYSTEM = "Classify the ticket as positive, neutral or negative. Answer with one word."
SHAPES = ("prompts", "template")


async def _child_run(shape: str, count: int, out: Path) -> dict[str, float]:
    from batch_provider.backends.registry import create_backend
    from batch_provider.core.ledger import RunKey
    from batch_provider.core.records import iter_list
    from batch_provider.core.render import RequestBuilder
    from batch_provider.core.rundir import run_directory
    from batch_provider.core.submission import submit_run
    from batch_provider.decorators.batch_llm import rows_from_return
    from batch_provider.emulator.process import running_emulator

    with running_emulator(time_factor=600.0) as emu:
        async with create_backend("openai", api_key="k", base_url=f"{emu.base_url}/v1") as backend:
            if shape == "prompts":
                prompts = [f"Ticket {i}: the parcel arrived late and damaged" for i in range(count)]
                builder = RequestBuilder(model="gpt-4.1-nano", max_tokens=16)
                make_rows: Any = lambda: rows_from_return(prompts, kind="chat", system=SYSTEM)  # noqa: E731
            else:
                data = [{"id": f"t-{i:06d}", "n": i, "text": "the parcel arrived late"} for i in range(count)]
                builder = RequestBuilder(
                    template="Ticket {{ n }}: {{ text }}", system=SYSTEM, model="gpt-4.1-nano", max_tokens=16
                )
                make_rows = lambda: data  # noqa: E731
            run_dir = run_directory(out, dag_id="d", run_id=shape)
            cpu, wall = time.process_time(), time.perf_counter()
            await submit_run(
                backend,
                builder.render(iter_list(make_rows())),
                run_dir,
                run_key=RunKey(dag_id="d", task_id="submit", run_id=shape),
                conn_id=None,
            )
            return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def _run(root: Path, shape: str, count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="submit-core-") as work:
        report = Path(work) / "report.json"
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        subprocess.run(
            [sys.executable, str(HERE), "--child", shape, "--rows", str(count), "--out", work,
             "--report", str(report)],
            check=True, env=env, cwd=work,
        )  # fmt: skip
        return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's root, timed in the same run")
    parser.add_argument("--child", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.getLogger("batch_provider").setLevel(logging.WARNING)  # no per-run cost table
        args.report.write_text(json.dumps(asyncio.run(_child_run(args.child, args.rows, args.out))))
        return
    trees = {"this checkout": REPO}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    print(f"submit of {args.rows:,} rows, process CPU s (median of {args.repeat}; wall s beside it)")
    for shape in SHAPES:
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
        for _ in range(args.repeat):
            for label, root in trees.items():
                runs[label].append(_run(root, shape, args.rows))
        medians = {label: statistics.median(r["cpu_s"] for r in got) for label, got in runs.items()}
        for label, got in runs.items():
            cpus = ", ".join(f"{r['cpu_s']:.2f}" for r in got)
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in got)
            print(f"  {shape:9} {label:14} {medians[label]:6.2f}  ({cpus}; wall {walls})")
        if "baseline" in medians:
            print(f"  {shape:9} speedup        {medians['baseline'] / medians['this checkout']:.2f}x")


if __name__ == "__main__":
    main()
