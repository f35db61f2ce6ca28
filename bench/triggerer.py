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
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx2
import psutil
import sqlalchemy
from _triggerer_db import DAG_FILE
from poll import KEY, create_batches

from batch_provider.emulator.process import running_emulator

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OURS = "batch_provider.triggers.batch.BatchWaitTrigger"
ANCHOR = "airflow.providers.openai.triggers.openai.OpenAIBatchTrigger"
PROBE = "_triggerer_probe.LagProbeTrigger"
STATUS_ROUTE = "GET /v1/batches/{batch_id}"
EMULATOR_ARGS = [
    *("--processing-seconds", "100000000", "--validating-seconds", "0", "--cancel-seconds", "0"),
    *("--log-level", "warning"),
]
AIRFLOW = [sys.executable, "-m", "airflow"]
LEGEND = """\
  polls/s: status polls the emulator served; %tgt: of batches / interval; ms/poll: CPU of the
  triggerer's processes per poll; runner/sup/emu: cores used by the trigger runner, by the
  triggerer's supervisor (the DB side) and by the emulator; lag in ms (overshoot of a 20 ms
  sleep in the triggerer's loop); blk%: summed lag / window; warn: the triggerer's "async thread was
  blocked" warnings; <=int: triggers resumed within one interval / ended; 1st rnd: time until every
  batch was polled once; load: 1-minute load average at window start/end"""


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


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- database


@contextmanager
def database(kind: str, home: Path) -> Iterator[str]:
    """A fresh metadata DB for one phase: yields its SQLAlchemy URL, removes it afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{home}/airflow.db"
        return
    name = f"bench_triggerer_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sqlalchemy.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextmanager
def latency_proxy(upstream_port: int, delay: float, work: Path) -> Iterator[str]:
    """Start ``_triggerer_proxy.py`` in front of the emulator; yields its base URL."""
    port_file = work / "proxy.port"
    cmd = [sys.executable, str(BENCH / "_triggerer_proxy.py"), str(upstream_port), str(delay), str(port_file)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the latency proxy did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def resumed_at(engine: sqlalchemy.Engine, map_indexes: list[int]) -> dict[int, float]:
    """map_index -> Unix time the triggerer moved that TaskInstance out of ``deferred``."""
    query = sqlalchemy.text(
        "SELECT map_index, updated_at FROM task_instance WHERE dag_id = 'bench_triggerer' "
        "AND task_id = 'wait' AND state != 'deferred' AND map_index IN :ids"
    ).bindparams(sqlalchemy.bindparam("ids", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": map_indexes}).all()
    out = {}
    for index, stamp in rows:
        when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
        out[index] = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return out


def assigned(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sqlalchemy.text("SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL")
        ).scalar()


# ---------------------------------------------------------------- processes


class Triggerer:
    """``airflow triggerer`` in its own process group; killed as a group on stop. Without the log
    server (it only serves log files to the UI), so the process tree is supervisor + runner."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*AIRFLOW, "triggerer", "--skip-serve-logs"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.supervisor = psutil.Process(self.proc.pid)
        self.runner: psutil.Process | None = None

    def find_runner(self, timeout: float = 120) -> None:
        """The trigger runner: the supervisor's only child (the log server is not started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"triggerer exited:\n{self.log.read_text()[-3000:]}")
            children = self.supervisor.children()
            if children:
                self.runner = children[0]
                return
            time.sleep(0.2)
        raise RuntimeError("the triggerer started no trigger-runner process")

    def tree(self) -> list[psutil.Process]:
        return [self.supervisor, *self.supervisor.children(recursive=True)]

    def cpu_seconds(self) -> tuple[float, float]:
        """(whole process tree, runner) user+system CPU seconds so far."""
        assert self.runner is not None
        total = 0.0
        for proc in self.tree():
            with suppress(psutil.Error):
                total += sum(proc.cpu_times()[:2])
        return total, sum(self.runner.cpu_times()[:2])

    def rss_mb(self) -> tuple[float, float]:
        """(whole process tree, runner) resident memory in MiB."""
        assert self.runner is not None
        total = 0.0
        for proc in self.tree():
            with suppress(psutil.Error):
                total += proc.memory_info().rss / 2**20
        return total, self.runner.memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Sampler(threading.Thread):
    """RSS of supervisor and runner every 0.5 s, from a thread (the bench itself never blocks it)."""

    def __init__(self, triggerer: Triggerer) -> None:
        super().__init__(daemon=True)
        self.triggerer = triggerer
        self.samples: list[tuple[float, float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            with suppress(psutil.Error):
                self.samples.append((time.time(), *self.triggerer.rss_mb()))


def airflow_env(
    home: Path, db_url: str, base_url: str, capacity: int, extra_path: str | None
) -> dict[str, str]:
    openai_conn = {"host": f"{base_url}/v1", "password": KEY}
    paths = [str(REPO), str(BENCH), *([extra_path] if extra_path else [])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(40),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(20),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__TRIGGERER__CAPACITY": str(capacity),
        "AIRFLOW_CONN_BENCH_OURS": json.dumps({"conn_type": "llm_openai", **openai_conn}),
        "AIRFLOW_CONN_BENCH_OPENAI": json.dumps({"conn_type": "openai", **openai_conn}),
    }


def run_command(env: dict[str, str], cmd: list[str], timeout: float = 600) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


# ---------------------------------------------------------------- one phase


def trigger_specs(phase: Phase, batch_ids: list[str], interval: float) -> list[list[Any]]:
    if phase.classpath == ANCHOR:
        kw = {"conn_id": "bench_openai", "poll_interval": interval, "timeout": 86400.0}
        return [[ANCHOR, {**kw, "batch_id": b}] for b in batch_ids]
    kw = {"conn_id": "bench_ours", "provider": "openai", "poll_interval_min": interval}
    kw["poll_interval_max"] = interval
    groups = [batch_ids[i : i + phase.per_trigger] for i in range(0, len(batch_ids), phase.per_trigger)]
    return [[OURS, {**kw, "batch_ids": group}] for group in groups]


async def cancel_all(base_url: str, batch_ids: list[str]) -> dict[str, float]:
    """Cancel each batch (final at once in this emulator); batch id -> Unix time it ended."""
    ended: dict[str, float] = {}
    gate = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:

        async def one(batch_id: str) -> None:
            async with gate:
                response = await client.post(f"/v1/batches/{batch_id}/cancel")
                response.raise_for_status()
                ended[batch_id] = time.time()

        await asyncio.gather(*(one(b) for b in batch_ids))
    return ended


def status_polls(emu: Any) -> int:
    return int(emu.stats()["requests"].get(STATUS_ROUTE, 0))


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
        env = airflow_env(work, url, api_url, len(specs) + 10, anchor_path)
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
        sampler = Sampler(triggerer)
        sampler.start()
        stack.callback(sampler.halt.set)

        # Warm-up: every trigger assigned, every batch polled once (or the cap).
        deadline = time.monotonic() + args.warmup_cap
        first_round = None
        while time.monotonic() < deadline:
            if triggerer.proc.poll() is not None:
                raise RuntimeError(f"triggerer exited:\n{triggerer.log.read_text()[-3000:]}")
            if status_polls(emu) - polls_start >= phase.batches and assigned(engine) >= len(specs):
                first_round = time.time() - started
                break
            time.sleep(0.5)
        fig["first_round_s"] = first_round
        time.sleep(args.settle)

        print(f"[{phase.name}] measuring for {args.duration:.0f}s …", flush=True)
        emu_proc = psutil.Process(emu.pid)
        load0 = os.getloadavg()
        emu_cpu0 = sum(emu_proc.cpu_times()[:2])
        cpu0 = triggerer.cpu_seconds()
        polls0, t0 = status_polls(emu), time.time()
        time.sleep(args.duration)
        polls1, t1 = status_polls(emu), time.time()
        cpu1 = triggerer.cpu_seconds()
        emu_cpu1 = sum(emu_proc.cpu_times()[:2])
        window = t1 - t0
        polls = polls1 - polls0
        cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        fig.update(
            polls=polls,
            polls_per_s=polls / window,
            target_per_s=phase.batches / args.interval,
            cpu_ms_per_poll=1000 * cpu[0] / polls if polls else float("nan"),
            runner_cores=cpu[1] / window,
            others_cores=(cpu[0] - cpu[1]) / window,
            emulator_cores=(emu_cpu1 - emu_cpu0) / window,
            load=(load0[0], os.getloadavg()[0]),
        )
        lags = [
            float(lag)
            for line in (probe_path.read_text().splitlines() if probe_path.exists() else [])
            for stamp, lag in [line.split()]
            if t0 <= float(stamp) <= t1
        ]
        fig.update(
            lag_samples=len(lags),
            lag_p50=pct(lags, 0.5),
            lag_p99=pct(lags, 0.99),
            lag_max=max(lags, default=float("nan")),
            blocked_frac=sum(lags) / 1000 / window,
        )
        in_window = [s for s in sampler.samples if t0 <= s[0] <= t1]
        fig.update(
            rss_runner_peak=max(s[2] for s in sampler.samples),
            rss_total_peak=max(s[1] for s in sampler.samples),
            rss_runner_steady=statistics.median(s[2] for s in in_window),
            rss_total_steady=statistics.median(s[1] for s in in_window),
        )

        # Resume: end every batch of a few triggers, wait for their TaskInstances.
        chosen = sorted(random.Random(7).sample(range(len(specs)), min(args.ended, len(specs))))
        members = {i: specs[i][1].get("batch_ids") or [specs[i][1]["batch_id"]] for i in chosen}
        print(f"[{phase.name}] ending the batches of {len(chosen)} triggers …", flush=True)
        ended = asyncio.run(cancel_all(emu.base_url, [b for group in members.values() for b in group]))
        end_time = {i: max(ended[b] for b in group) for i, group in members.items()}
        wait_until = time.monotonic() + args.interval + args.resume_grace
        seen: dict[int, float] = {}
        while time.monotonic() < wait_until and len(seen) < len(chosen):
            seen = resumed_at(engine, chosen)
            time.sleep(0.5)
        delays = [seen[i] - end_time[i] for i in chosen if i in seen]
        fig.update(
            resumed=len(seen),
            ended=len(chosen),
            resume_p50=pct(delays, 0.5),
            resume_max=max(delays, default=float("nan")),
            resume_within_interval=sum(d <= args.interval for d in delays),
        )
        log_text = triggerer.log.read_text(errors="replace")
        fig["blocked_warnings"] = log_text.count("async thread was blocked")
        fig["trigger_errors"] = log_text.count("Trigger failed") + log_text.count("Traceback")
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
