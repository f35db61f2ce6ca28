"""A distributed Airflow deployment of the provider on one machine, and a triggerer fail-over run.

The stack, every part a separate process:

- PostgreSQL metadata DB: a fresh database ``bp_dist_<random>`` on the local server, dropped after;
- CeleryExecutor on the local Redis, on a Redis db number of its own (flushed after);
- api-server, scheduler, dag-processor, two Celery workers and two triggerers;
- the Batch API emulator, and moto's S3 server holding the run folders (``s3://bp_s3@bp-runs/...``),
  as the docker-compose stack does with its ``emulator`` and ``s3`` services.

``python scripts/distributed.py`` starts the stack, triggers the example DAGs through the REST API,
SIGKILLs the triggerer that holds the waiting triggers while their batches run, checks that the
other triggerer takes them over, that every run succeeds and that no batch was created twice, then
stops everything (also on failure or Ctrl-C) and prints a report as JSON.

The stack is :class:`DistributedStack` (``_distributed_stack.py``, with ``_distributed_clients.py``
and ``_process_groups.py``); this module holds the fail-over scenario, its checks and the command.
``tests/deployment`` loads this file and uses the same stack and scenario.

Environment: ``BP_PG_DSN`` (admin DSN of the PostgreSQL server, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``BP_REDIS_HOST`` / ``BP_REDIS_PORT``
(default 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The helper modules sit beside this file, also when tests/deployment loads it by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _distributed_stack import ADMIN_USER, DEFAULT_TIME_FACTOR, DistributedStack

__all__ = ["ADMIN_USER", "SCENARIO_RUNS", "DistributedStack", "FailoverReport", "problems", "run_failover"]

# The runs of the fail-over scenario: (dag_id, logical date, conf). The logical dates pick the
# sample inputs in dags/data (a daily run's data interval is the day before its logical date).
SCENARIO_RUNS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("nightly_ticket_enrichment", "2026-11-21T00:00:00Z", {}),
    ("document_summarisation", None, {}),
    ("historical_backfill", "2026-04-01T00:00:00Z", {}),
    (
        "manual_batch",
        None,
        {"provider": "anthropic", "model": "claude-haiku-4-5", "max_tokens": 120, "max_attempts": 2},
    ),
)


# ---------------------------------------------------------------------- the fail-over scenario


def batches_of(ledger: dict) -> list[tuple[str, str]]:
    """``[(provider, batch_id)]`` of every chunk of every attempt in a ledger."""
    return [
        (ledger["provider"], chunk["batch"]["batch_id"])
        for attempt in ledger["attempts"].values()
        for chunk in attempt["chunks"]
        if chunk.get("batch")
    ]


def chunk_count(ledger: dict) -> int:
    return sum(len(a["chunks"]) for a in ledger["attempts"].values())


@dataclass
class FailoverReport:
    runs: dict[str, str] = field(default_factory=dict)
    final_states: dict[str, str] = field(default_factory=dict)
    task_states: dict[str, dict[str, str | None]] = field(default_factory=dict)
    killed: str = ""
    survivor: str = ""
    triggers_moved: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    moved_tasks: dict[int, str] = field(default_factory=dict)
    """``{trigger id: "dag_id/run_id/task_id"}`` of the triggers the killed triggerer held."""
    batch_status_at_kill: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    batch_ids: list[str] = field(default_factory=list)
    batches_created: dict[str, int] = field(default_factory=dict)
    manifests: dict[str, dict] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def run_failover(stack: DistributedStack, log: Any = print) -> FailoverReport:
    """Trigger the scenario runs, SIGKILL the triggerer holding their triggers mid-wait, wait for
    every run to end. Collects what happened; the caller (script or test) judges it."""
    report = FailoverReport()
    t0 = time.monotonic()
    for dag_id, logical_date, conf in SCENARIO_RUNS:
        run_id = stack.trigger(dag_id, logical_date, conf)
        report.runs[run_id] = dag_id
        log(f"triggered {dag_id}: {run_id}")

    # Kill once every run's wait task has been deferred (or has already finished), at a moment
    # when triggers are held: best when all four wait at once, but a loaded machine may let an
    # early batch end before the last run defers.
    seen_deferred: set[str] = set()

    def kill_moment() -> dict[str, int] | None:
        waits = {k: v for k, v in stack.triggers_of_tasks().items() if k.endswith(".wait")}
        assignment = stack.trigger_assignment()
        held = {k: t for k, t in waits.items() if assignment.get(t) is not None}
        seen_deferred.update(k.rsplit("/", 1)[0] for k in held)
        done = {
            f"{d}/{r}"
            for d, r in stack.sql(
                "select dag_id, run_id from task_instance where task_id like '%%.wait' and state = 'success'"
            )
        }
        runs = {f"{d}/{r}" for r, d in report.runs.items()}
        if len(held) == len(runs) or (held and runs <= seen_deferred | done):
            return held
        return None

    waits = stack.wait_for(kill_moment, 300, "the wait tasks never got deferred", interval=0.5)
    report.timings["deferred_s"] = round(time.monotonic() - t0, 1)
    report.memory_mb = stack.memory_mb()
    assignment = stack.trigger_assignment()
    by_job = {job: name for name, job in stack.triggerer_jobs.items()}
    counts = {
        name: sum(1 for tid in waits.values() if assignment.get(tid) == job) for job, name in by_job.items()
    }
    victim = max(counts, key=counts.get)
    report.killed = victim
    report.survivor = next(n for n in stack.triggerer_jobs if n != victim)
    log(f"{len(waits)} of {len(report.runs)} wait triggers held, per triggerer: {counts}; SIGKILL {victim}")

    held_runs = {
        key.split("/")[1] for key, tid in waits.items() if assignment.get(tid) == stack.triggerer_jobs[victim]
    }
    for ledger in stack.ledgers().values():
        if ledger["run_key"]["run_id"] in held_runs:
            for provider, batch_id in batches_of(ledger):
                report.batch_status_at_kill[batch_id] = stack.batch_status(provider, batch_id)
    victim_job = stack.triggerer_jobs[victim]
    survivor_job = stack.triggerer_jobs[report.survivor]
    moved = {tid: assignment[tid] for tid in waits.values() if assignment.get(tid) == victim_job}
    report.moved_tasks = {tid: key for key, tid in waits.items() if tid in moved}
    stack.kill(victim)
    report.timings["killed_at_s"] = round(time.monotonic() - t0, 1)

    # Watch the dead triggerer's triggers move to the survivor (or fire there and disappear).
    seen: dict[int, int | None] = {}

    def taken_over() -> bool:
        now = stack.trigger_assignment()
        for tid in moved:
            if tid in now and now[tid] not in (None, victim_job):
                seen[tid] = now[tid]
        return all(tid in seen for tid in moved) or not any(t in now for t in moved)

    stack.wait_for(taken_over, 120, "the dead triggerer's triggers were never reassigned", interval=0.5)
    report.triggers_moved = {tid: (victim_job, seen.get(tid)) for tid in moved}
    report.timings["taken_over_s"] = round(time.monotonic() - t0, 1)
    log(f"triggers reassigned: {report.triggers_moved} (survivor job {survivor_job})")

    report.final_states = stack.wait_runs(report.runs, timeout=300)
    report.timings["runs_done_s"] = round(time.monotonic() - t0, 1)
    for run_id, dag_id in report.runs.items():
        report.task_states[run_id] = stack.task_states(dag_id, run_id)
    ledgers = stack.ledgers()
    report.chunks = sum(chunk_count(ledger) for ledger in ledgers.values())
    report.batch_ids = [b for ledger in ledgers.values() for _, b in batches_of(ledger)]
    report.batches_created = stack.emulator_stats()["batches_created"]
    report.manifests = stack.manifests()
    report.timings.update(stack.timings)
    return report


def problems(report: FailoverReport) -> list[str]:
    """What is wrong with a fail-over run (empty when it is right)."""
    out = []
    bad = {r: s for r, s in report.final_states.items() if s != "success"}
    if bad:
        out.append(f"runs not successful: {bad}")
    if not report.triggers_moved:
        out.append("the killed triggerer held no trigger")
    if any(new is None or new == old for old, new in report.triggers_moved.values()):
        out.append(f"not every trigger was taken over: {report.triggers_moved}")
    ended = {b: s for b, s in report.batch_status_at_kill.items() if s in ("completed", "ended")}
    if ended:
        out.append(f"batches had already ended when the triggerer was killed: {ended}")
    created = sum(report.batches_created.values())
    if created != report.chunks:
        out.append(f"{created} batches created for {report.chunks} chunks")
    if len(set(report.batch_ids)) != len(report.batch_ids):
        out.append("a batch id is recorded twice in the ledgers")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-factor", type=float, default=DEFAULT_TIME_FACTOR)
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the component logs")
    args = parser.parse_args(argv)

    stack = DistributedStack(workdir=args.workdir, time_factor=args.time_factor, keep_workdir=args.keep)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))  # unwinds through the with block: stop() runs
    t0 = time.monotonic()
    with stack:
        print(
            f"stack up in {stack.timings['startup_s']} s: api {stack.api_url}, db {stack.db_name}, "
            f"redis db {stack.redis_db}, logs {stack.logs}",
            flush=True,
        )
        report = run_failover(stack, log=lambda m: print(m, flush=True))
        wrong = problems(report)
    report.timings["total_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(report.as_dict(), indent=1, default=str))
    for line in wrong:
        print("PROBLEM:", line, file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
