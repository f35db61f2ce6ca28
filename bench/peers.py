"""This provider side by side with Airflow's common-ai ``LLMBatchOperator`` on one workload.

The same N OpenAI chat requests (one prompt string each, same system prompt, model and token cap)
go through common-ai's ``@task.llm_batch`` and through this provider's ``@task.batch_llm``
(submit → wait → collect → retry), one after the other in one run, against one emulator. Each
side runs ``dag.test()`` in a child process of its own (so peak RSS is its own) on one migrated
Airflow DB, with results on local disk (``file://``). Sides per size:

- ``theirs``: common-ai 1.0 (its 30 s poll floor lowered to ``--poll`` seconds in its process,
  so both sides poll at the same interval; both poll from the worker, ``deferrable=False``);
- ``ours, cache off``: ``use_cache=False``;
- ``ours, cache cold`` then ``ours, cache warm``: the result cache on, first filled by one run,
  then serving a second run of the same requests (another logical date).

Figures per side: wall time per phase (theirs: submit = ``execute`` start to the adapter's submit
answer, wait = its poll loop, collect = its result landing; ours: the submit, wait and
collect+retry task durations), peak RSS and its growth over the process after imports, bytes and
files left in result storage (ours: the run folder and the cache), XCom bytes, and rows
accounted; then every figure as a ratio ours / theirs.

Usage::

    .venv/bin/python bench/peers.py                       # 5,000 and 50,000 requests
    .venv/bin/python bench/peers.py --requests 5000
    .venv/bin/python bench/peers.py --large               # adds 500,000 (theirs: 10 mapped tasks)
    .venv/bin/python bench/peers.py --requests 50000 --profile /tmp/peers-prof --keep
        # a cProfile of each timed task, and the result folders left in place to look into
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _peers_child import child, tree

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-peers"
MODEL = "gpt-4o-mini"
SYSTEM = "Classify the ticket as positive, neutral or negative. Answer with one word."
MAX_PER_BATCH = 50_000  # OpenAI's, enforced by common-ai's adapter: larger inputs are mapped
SIDES = ("theirs", "ours-nocache", "ours-cold", "ours-warm")
LABELS = {
    "theirs": "common-ai",
    "ours-nocache": "ours, cache off",
    "ours-cold": "ours, cache cold",
    "ours-warm": "ours, cache warm",
}

DAG_FILE = '''
"""Bench DAGs of bench/peers.py: the same prompts through common-ai and through this provider."""
import os
from datetime import datetime

from airflow.sdk import DAG, task

N = int(os.environ["PEERS_N"])
SHARDS = max(1, -(-N // {max_per_batch}))
POLL = float(os.environ["PEERS_POLL"])
SYSTEM = {system!r}


def prompts(shard: int, shards: int) -> list[str]:
    size = -(-N // shards)
    return [f"Ticket {{i}}: the delivery was late again and nobody answered my mail."
            for i in range(shard * size, min(N, (shard + 1) * size))]


with DAG("peers_theirs", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as theirs:

    @task.llm_batch(llm_conn_id="peers_pydanticai", model_id="openai:{model}",
                    result_path=os.environ["PEERS_RESULTS"], system_prompt=SYSTEM, max_tokens=16,
                    poll_interval=POLL, deferrable=False)
    def summaries(shard: int) -> list[str]:
        return prompts(shard, SHARDS)

    if SHARDS == 1:
        summaries(0)
    else:
        summaries.expand(shard=list(range(SHARDS)))


with DAG("peers_ours", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as ours:

    @task.batch_llm(provider="openai", conn_id="peers_openai", model="{model}", max_tokens=16,
                    system=SYSTEM, poll_interval=POLL, max_poll_interval=POLL, deferrable=False,
                    use_cache=os.environ["PEERS_CACHE"] == "1")
    def summaries() -> list[str]:
        return prompts(0, 1)

    summaries()
'''


# ----------------------------------------------------------------------------- child side


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


# ----------------------------------------------------------------------------- parent side


def run_side(side: str, n: int, day: int, home: Path, results: Path, base_url: str, poll: float) -> dict:
    env = {
        **os.environ,
        **_airflow_env(home),
        "PEERS_N": str(n),
        "PEERS_SIDE": side,
        "PEERS_POLL": str(poll),
        "PEERS_CACHE": "0" if side == "ours-nocache" else "1",
        "PEERS_RESULTS": f"file://{results}",
        "BATCH_PROVIDER_RUN_PATH": f"file://{results}",
        "AIRFLOW_CONN_PEERS_PYDANTICAI": json.dumps(
            {"conn_type": "pydanticai", "password": KEY, "host": f"{base_url}/v1"}
        ),
        "AIRFLOW_CONN_PEERS_OPENAI": json.dumps(
            {"conn_type": "llm_openai", "password": KEY, "host": f"{base_url}/v1"}
        ),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", side, "--n", str(n), "--day", str(day)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"side"')]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{side} at {n} requests failed (exit {done.returncode})")
    return json.loads(lines[-1])


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def report(figures: list[dict]) -> None:
    rows = [
        ("submit s", lambda f: f["phases"].get("submit", 0.0)),
        ("wait s", lambda f: f["phases"].get("wait", 0.0)),
        ("collect s", lambda f: f["phases"].get("collect", 0.0)),
        ("task time s", lambda f: f["task_s"]),
        ("dag.test total s", lambda f: f["total_s"]),
        ("peak RSS MB", lambda f: f["peak_rss_mb"]),
        ("RSS growth MB", lambda f: f["rss_growth_mb"]),
        ("bytes left MB", lambda f: f["bytes_left"] / 1e6),
        ("files left", lambda f: f["files_left"]),
        ("of which cache MB", lambda f: f["cache_bytes"] / 1e6),
        ("XCom bytes", lambda f: f["xcom_bytes"]),
        ("rows succeeded", lambda f: f["accounted"]),
    ]
    for n in sorted({f["requests"] for f in figures}):
        by_side = {f["side"]: f for f in figures if f["requests"] == n}
        theirs = by_side["theirs"]
        sides = [s for s in SIDES if s in by_side]
        states = ", ".join(f"{LABELS[s]} {by_side[s]['state']}" for s in sides)
        print(f"\n{n:,} requests (states: {states})")
        header = "| figure | " + " | ".join(LABELS[s] for s in sides) + " | " + " | ".join(
            f"{LABELS[s]} / common-ai" for s in sides if s != "theirs"
        ) + " |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for label, get in rows:
            values = [get(by_side[s]) for s in sides]
            ratios = [_ratio(get(by_side[s]), get(theirs)) for s in sides if s != "theirs"]
            cells = [f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" for v in values]
            print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--large", action="store_true", help="also run 500,000 requests")
    parser.add_argument("--poll", type=float, default=1.0, help="poll interval of both sides, seconds")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed) to look into")
    parser.add_argument(
        "--profile", type=Path, help="write a cProfile of each timed phase here (a file per side, size, task)"
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--day", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.day)), flush=True)
        return
    if "theirs" not in args.sides:
        parser.error("the ratios need the 'theirs' side")
    sizes = [*args.requests, *([500_000] if args.large else [])]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["PEERS_PROFILE"] = str(args.profile.resolve())

    sys.path.insert(0, str(REPO))
    from batch_provider.emulator.process import running_emulator

    work = Path(tempfile.mkdtemp(prefix="bp-peers-"))
    home = work / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "peers_dags.py").write_text(
        DAG_FILE.format(max_per_batch=MAX_PER_BATCH, system=SYSTEM, model=MODEL)
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env={**os.environ, **_airflow_env(home)},
        check=True,
        capture_output=True,
    )
    extra = ["--log-level", "warning", "--per-request-seconds", "0.01", "--outputs-at-finalize"]
    figures: list[dict] = []
    try:
        with running_emulator(time_factor=600.0, extra_args=extra) as emu:
            day = 0
            for n in sizes:
                cache_root = work / f"ours-cache-{n}"
                for side in args.sides:
                    results = cache_root if side in ("ours-cold", "ours-warm") else work / f"{side}-{n}"
                    before = tree(results) if results.exists() else (0, 0)
                    day += 1
                    figure = run_side(side, n, day, home, results, emu.base_url, args.poll)
                    # a warm run shares the cold run's folder: count what it added
                    figure["bytes_left"] -= before[0]
                    figure["files_left"] -= before[1]
                    figures.append(figure)
                    print(
                        f"{LABELS[side]} {n:,}: {figure['state']}, "
                        + ", ".join(f"{k} {v:.2f}s" for k, v in figure["phases"].items()),
                        flush=True,
                    )
                    if side == "theirs" and not args.keep:
                        shutil.rmtree(results, ignore_errors=True)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
