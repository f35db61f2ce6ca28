"""Many batches waiting at once in ONE real Airflow triggerer: our trigger against the OpenAI anchor.

Each phase starts from nothing: a fresh emulator (clock factor 1, batches stay ``in_progress``),
``--batches`` OpenAI batches created through the API, a fresh metadata DB (a SQLite file, or a new
database on the PostgreSQL server at 127.0.0.1:5432, dropped afterwards) migrated with
``airflow db migrate``, then Trigger rows plus one ``deferred`` TaskInstance each written straight
into the DB (``_triggerer_db.py``; the rows a deferring task leaves), then ``airflow triggerer``
(its supervisor and its trigger-runner child, the one asyncio loop that runs every trigger).

Phases (same run, same machine):
  ours NxB     ``BatchWaitTrigger``: N/B triggers watching B batches each (B=1 is the worst case,
               B=100 the intended one-trigger-per-run shape)
  anchor Nx1   ``OpenAIBatchTrigger`` from apache-airflow-providers-openai (blocking SDK call in
               ``async def run``), at ``--anchor-batches``, from ``--anchor-path`` (a directory on
               the triggerer's PYTHONPATH only); ours is also run at that N for same-N ratios.
Every trigger polls every ``--interval`` seconds (ours: poll_interval_min = max = interval). The
triggerer reaches the emulator through ``_triggerer_proxy.py``, which delays every response by
``--latency-ms`` (default 100 ms, a plausible provider round trip; the emulator itself answers in
well under a millisecond, which hides what a blocking client costs).

Figures, over a window of ``--duration`` s that opens once every batch was polled once (or after
``--warmup-cap`` s):
  polls/s      ``GET /v1/batches/{id}`` served, from the emulator's ``/_emu/stats`` counters;
               "% target" compares with batches / interval
  CPU ms/poll  utime+stime of the triggerer's process tree (supervisor, runner) over the
               window (psutil, i.e. /proc/<pid>/stat) / polls; cores used by runner, supervisor, emulator
  RSS          runner, and the whole tree: peak over the phase (0.5 s samples), median over the window
  loop lag     a ``LagProbeTrigger`` (``_triggerer_probe.py``) deferred with the others sleeps 20 ms
               in the same loop and logs how late it wakes; p50/p99/max over the window, and
               "blocked" = summed lag / window. "warns" counts the triggerer's own "async thread
               was blocked" warnings
  resume       after the window ``--ended`` triggers get all their batches cancelled (the emulator
               makes a cancel final at once); resume = the TaskInstance's ``updated_at`` when the
               triggerer set it ``scheduled`` minus the time the trigger's last batch ended.
               Target: within one poll interval
Ratios print ours / anchor for polls/s and anchor / ours for lag p99 (both > 1: ours better).

    .venv/bin/python bench/triggerer.py --quick
    .venv/bin/python bench/triggerer.py --batches 10000 --anchor-batches 1000 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy
from _triggerer_db import DAG_FILE
from _triggerer_measure import (
    Sampler,
    assigned,
    batches_polled,
    ended_triggers,
    gap_figures,
    lag_figures,
    log_figures,
    measure_window,
    resume_figures,
    rss_figures,
    status_polls,
)
from _triggerer_setup import AIRFLOW, BENCH, Triggerer, airflow_env, database, latency_proxy, run_command
from poll import create_batches

from batch_provider.emulator.process import running_emulator

OURS = "batch_provider.triggers.batch.BatchWaitTrigger"
ANCHOR = "airflow.providers.openai.triggers.openai.OpenAIBatchTrigger"
PROBE = "_triggerer_probe.LagProbeTrigger"
EMULATOR_ARGS = [
    *("--processing-seconds", "100000000", "--validating-seconds", "0", "--cancel-seconds", "0"),
    *("--log-level", "warning"),
]
LEGEND = """\
  polls/s: status polls the emulator served; %tgt: of batches / interval; ms/poll: CPU of the
  triggerer's processes per poll; runner/sup/emu: cores used by the trigger runner, by the
  triggerer's supervisor (the DB side) and by the emulator; lag in ms (overshoot of a 20 ms
  sleep in the triggerer's loop); blk%: summed lag / window; warn: the triggerer's "async thread was
  blocked" warnings; <=int: triggers resumed within one interval / ended; 1st rnd: time until every
  batch was polled once; load: 1-minute load average at window start/end; poll gap: per batch, the
  longest time between two of its polls in the window (logged by the latency proxy)"""


@dataclass
class Phase:
    name: str
    classpath: str
    batches: int
    per_trigger: int = 1

    @property
    def triggers(self) -> int:
        return -(-self.batches // self.per_trigger)


@dataclass
class Result:
    phase: Phase
    interval: float
    figures: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.figures.get(key)


# ---------------------------------------------------------------- one phase


def trigger_specs(phase: Phase, batch_ids: list[str], interval: float) -> list[list[Any]]:
    if phase.classpath == ANCHOR:
        kw = {"conn_id": "bench_openai", "poll_interval": interval, "timeout": 86400.0}
        return [[ANCHOR, {**kw, "batch_id": b}] for b in batch_ids]
    kw = {"conn_id": "bench_ours", "provider": "openai", "poll_interval_min": interval}
    kw["poll_interval_max"] = interval
    groups = [batch_ids[i : i + phase.per_trigger] for i in range(0, len(batch_ids), phase.per_trigger)]
    return [[OURS, {**kw, "batch_ids": group}] for group in groups]


def run_phase(phase: Phase, args: argparse.Namespace) -> Result:
    result = Result(phase, args.interval)
    fig = result.figures
    work = Path(tempfile.mkdtemp(prefix="bench-triggerer-"))
    # Unwound in reverse: the triggerer stops before its DB is dropped and the emulator stops.
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        emu = stack.enter_context(running_emulator(time_factor=1.0, extra_args=EMULATOR_ARGS))
        url = stack.enter_context(database(args.db, work))
        print(f"[{phase.name}] creating {phase.batches} batches …", flush=True)
        batch_ids = asyncio.run(create_batches(emu.base_url, "openai", phase.batches))
        specs = trigger_specs(phase, batch_ids, args.interval)
        probe_path = work / "lag.txt"
        (work / "dags").mkdir()
        (work / "dags" / "bench_triggerer.py").write_text(DAG_FILE)
        spec_file = work / "spec.json"
        spec_file.write_text(
            json.dumps(
                {
                    "dags_folder": str(work / "dags"),
                    "triggers": specs,
                    "probe": [PROBE, {"path": str(probe_path), "period": 0.02}],
                }
            )
        )
        anchor_path = args.anchor_path if phase.classpath == ANCHOR else None
        api_url = emu.base_url
        if args.latency_ms:
            api_url = stack.enter_context(latency_proxy(emu.port, args.latency_ms / 1000, work))
        env = airflow_env(work, url, api_url, len(specs) + 10, anchor_path, args.select_per_loop)
        print(f"[{phase.name}] migrating the DB and inserting {len(specs)} deferred tasks …", flush=True)
        run_command(env, [*AIRFLOW, "db", "migrate"])
        run_command(env, [sys.executable, str(BENCH / "_triggerer_db.py"), str(spec_file)])
        engine = sqlalchemy.create_engine(url)
        stack.callback(engine.dispose)

        polls_start = status_polls(emu)
        started = time.time()
        triggerer = Triggerer(env, work / "triggerer.log")
        if args.keep_logs:  # copied once the triggerer has stopped
            kept = Path(args.keep_logs) / f"triggerer-{phase.name.replace(' ', '_')}.log"
            stack.callback(lambda: shutil.copy(triggerer.log, kept))
        stack.callback(triggerer.stop)
        triggerer.find_runner()
        sampler = Sampler(triggerer.tree)
        sampler.start()
        stack.callback(sampler.halt.set)

        # Warm-up: every trigger assigned, every batch polled once (or the cap).
        deadline = time.monotonic() + args.warmup_cap
        first_round = None
        watched = set(batch_ids)
        while time.monotonic() < deadline:
            triggerer.check_running()
            if args.latency_ms:  # the proxy's log names each polled batch: every one, once
                polled = batches_polled(work / "polls.log", watched)
            else:
                polled = status_polls(emu) - polls_start
            if polled >= phase.batches and assigned(engine) >= len(specs):
                first_round = time.time() - started
                break
            time.sleep(2.0)
        fig["first_round_s"] = first_round
        time.sleep(args.settle)

        print(f"[{phase.name}] measuring for {args.duration:.0f}s …", flush=True)
        t0, t1, window = measure_window(emu, triggerer.tree, args.duration, phase.batches / args.interval)
        fig.update(window)
        fig.update(lag_figures(probe_path, t0, t1))
        fig.update(rss_figures(sampler.samples, t0, t1))
        if args.latency_ms:  # the proxy logs each status call
            fig.update(gap_figures(work / "polls.log", t0, t1, batch_ids, args.interval))

        # Resume: end every batch of a few triggers, wait for their TaskInstances.
        members = ended_triggers(specs, args.ended)
        print(f"[{phase.name}] ending the batches of {len(members)} triggers …", flush=True)
        fig.update(resume_figures(engine, emu.base_url, members, args.interval, args.resume_grace))
        fig.update(log_figures(triggerer.log.read_text(errors="replace")))
    return result


# ---------------------------------------------------------------- report


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"triggerer benchmark: interval {args.interval:.0f}s, window {args.duration:.0f}s, API latency "
        f"{args.latency_ms:.0f} ms, db {args.db}, {os.cpu_count()} cores"
    )
    head = (
        f"{'phase':22} {'trig':>6} {'polls/s':>8} {'%tgt':>5} {'ms/poll':>7} {'runner':>6} {'sup':>5} "
        f"{'emu':>5} {'RSS run pk/st MB':>16} {'RSS all pk/st MB':>16} {'lag p50':>7} {'p99':>7} "
        f"{'max':>7} {'blk%':>5} {'warn':>4} {'resume p50/max s':>16} {'<=int':>7} {'1st rnd':>7} {'load':>9}"
    )
    print(head)
    for r in results:
        f = r.figures
        first = f"{f['first_round_s']:.0f}s" if f.get("first_round_s") is not None else "never"
        print(
            f"{r.phase.name:22} {r.phase.triggers:6d} {f['polls_per_s']:8.1f} "
            f"{100 * f['polls_per_s'] / f['target_per_s']:5.0f} {f['cpu_ms_per_poll']:7.2f} "
            f"{f['runner_cores']:6.2f} {f['others_cores']:5.2f} {f['emulator_cores']:5.2f} "
            f"{f['rss_runner_peak']:7.0f}/{f['rss_runner_steady']:<8.0f} "
            f"{f['rss_total_peak']:7.0f}/{f['rss_total_steady']:<8.0f} "
            f"{f['lag_p50']:7.1f} {f['lag_p99']:7.1f} {f['lag_max']:7.0f} {100 * f['blocked_frac']:5.1f} "
            f"{f['blocked_warnings']:4d} {f['resume_p50']:7.1f}/{f['resume_max']:<8.1f} "
            f"{f['resume_within_interval']:3d}/{f['ended']:<3d} {first:>7} "
            f"{f['load'][0]:4.1f}/{f['load'][1]:<4.1f}"
        )
        if f.get("gap_max") is not None:
            print(
                f"  poll gap per batch p50/max {f['gap_p50']:.1f}/{f['gap_max']:.1f} s; starved (gap >= 2 x "
                f"interval): {f['starved']}; resume p50 {f['resume_p50']:.1f} s (target < interval + 5 s)"
            )
        if f["trigger_errors"]:
            print(f"  ! {f['trigger_errors']} trigger failures/tracebacks in the triggerer log")
    print(LEGEND)
    anchor = next((r for r in results if r.phase.classpath == ANCHOR), None)
    if anchor is None or len(results) < 2:
        return
    print()
    print(f"ratios vs {anchor.phase.name} (ours/anchor polls/s; anchor/ours lag p99 and lag max):")
    for r in results:
        if r is anchor:
            continue
        f, a = r.figures, anchor.figures
        share, anchor_share = f["polls_per_s"] / f["target_per_s"], a["polls_per_s"] / a["target_per_s"]
        print(
            f"  {r.phase.name:22} polls/s x{f['polls_per_s'] / max(a['polls_per_s'], 1e-9):7.1f}   "
            f"% of target x{share / max(anchor_share, 1e-9):6.1f}   "
            f"lag p99 x{a['lag_p99'] / max(f['lag_p99'], 1e-3):7.1f}   "
            f"lag max x{a['lag_max'] / max(f['lag_max'], 1e-3):7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=10_000, help="batches for our trigger")
    parser.add_argument("--per-trigger", type=int, default=100, help="batches per trigger, grouped shape")
    parser.add_argument("--anchor-batches", type=int, default=1000, help="batches for the anchor (0: skip)")
    parser.add_argument(
        "--anchor-path", default="/tmp/bench-anchor-venv", help="dir with the openai provider"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="measurement window, seconds")
    parser.add_argument("--interval", type=float, default=30.0, help="poll interval of every trigger")
    parser.add_argument(
        "--latency-ms", type=float, default=100.0, help="added to every API response (0: direct)"
    )
    parser.add_argument(
        "--ended", type=int, default=20, help="triggers whose batches end for the resume test"
    )
    parser.add_argument("--warmup-cap", type=float, default=120.0, help="max wait for the first round")
    parser.add_argument(
        "--select-per-loop",
        type=int,
        default=None,
        help="[triggerer] max_trigger_to_select_per_loop (Airflow's default, 50, when not given): "
        "how many new triggers the triggerer takes per loop, which bounds how fast thousands start",
    )
    parser.add_argument("--settle", type=float, default=5.0, help="pause after the first round")
    parser.add_argument("--resume-grace", type=float, default=30.0, help="resume wait beyond one interval")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy each phase's triggerer log here")
    parser.add_argument(
        "--phases",
        default="worst,grouped,same-n,anchor",
        help="comma list: worst (Nx1), grouped (N/BxB), same-n (ours at the anchor's N), anchor",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small N, short window")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.per_trigger, args.anchor_batches = 200, 20, min(args.anchor_batches, 50)
        args.duration, args.interval, args.ended, args.warmup_cap = 15.0, 5.0, 5, 60.0
    wanted = set(args.phases.split(","))
    phases = []
    if "worst" in wanted:
        phases.append(Phase(f"ours {args.batches}x1", OURS, args.batches))
    if "grouped" in wanted:
        phases.append(Phase(f"ours {args.batches}x{args.per_trigger}", OURS, args.batches, args.per_trigger))
    if args.anchor_batches and wanted & {"same-n", "anchor"}:
        try_anchor = subprocess.run(
            [sys.executable, "-c", f"import {ANCHOR.rsplit('.', 1)[0]}"],
            env={**os.environ, "PYTHONPATH": args.anchor_path},
            capture_output=True,
        )
        if "same-n" in wanted:
            phases.append(Phase(f"ours {args.anchor_batches}x1", OURS, args.anchor_batches))
        if try_anchor.returncode:
            print(
                f"anchor skipped: {ANCHOR} does not import from {args.anchor_path}; install it with\n"
                f"  .venv/bin/uv pip install --python .venv/bin/python --target {args.anchor_path} "
                "--no-deps apache-airflow-providers-openai openai distro tqdm"
            )
        elif "anchor" in wanted:
            phases.append(Phase(f"anchor {args.anchor_batches}x1", ANCHOR, args.anchor_batches))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    results = []
    for phase in phases:
        results.append(run_phase(phase, args))
        report(results[-1:], args)
    report(results, args)


if __name__ == "__main__":
    main()
