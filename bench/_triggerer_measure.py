"""The figures of one ``triggerer.py`` phase: polls, CPU, RSS, loop lag and resume time.

- :class:`ProcessTree`: user+system CPU seconds and RSS of the triggerer's processes (supervisor and
  trigger runner, through psutil, i.e. /proc/<pid>/stat), and :class:`Sampler`, its RSS every 0.5 s;
- :func:`measure_window`: status polls served by the emulator (its ``/_emu/stats`` counters), CPU
  of the triggerer and of the emulator, and the load average over the measurement window;
- :func:`lag_figures`: the lines the ``LagProbeTrigger`` (``_triggerer_probe.py``) wrote in the window;
- :func:`resume_figures`: cancel every batch of some triggers (final at once in the emulator) and
  time how long the triggerer takes to move their TaskInstances out of ``deferred``;
- :func:`log_figures`: the triggerer's "blocked" warnings and trigger failures in its log.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import psutil
import sqlalchemy
from poll import KEY

STATUS_ROUTE = "GET /v1/batches/{batch_id}"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def status_polls(emu: Any) -> int:
    return int(emu.stats()["requests"].get(STATUS_ROUTE, 0))


# ---------------------------------------------------------------- the triggerer's processes


@dataclass
class ProcessTree:
    """The triggerer's supervisor and, once found, its trigger runner (the one asyncio loop)."""

    supervisor: psutil.Process
    runner: psutil.Process | None = None

    def _tree_and_runner(self, read: Callable[[psutil.Process], float]) -> tuple[float, float]:
        assert self.runner is not None
        total = 0.0
        for proc in [self.supervisor, *self.supervisor.children(recursive=True)]:
            with suppress(psutil.Error):
                total += read(proc)
        return total, read(self.runner)

    def cpu_seconds(self) -> tuple[float, float]:
        """(whole process tree, runner) user+system CPU seconds so far."""
        return self._tree_and_runner(lambda proc: sum(proc.cpu_times()[:2]))

    def rss_mb(self) -> tuple[float, float]:
        """(whole process tree, runner) resident memory in MiB."""
        return self._tree_and_runner(lambda proc: proc.memory_info().rss / 2**20)


class Sampler(threading.Thread):
    """RSS of supervisor and runner every 0.5 s, from a thread (the bench itself never blocks it)."""

    def __init__(self, tree: ProcessTree) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.samples: list[tuple[float, float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            with suppress(psutil.Error):
                self.samples.append((time.time(), *self.tree.rss_mb()))


def rss_figures(samples: list[tuple[float, float, float]], t0: float, t1: float) -> dict[str, float]:
    """Peaks over the whole phase, medians over the window ``t0``-``t1``."""
    in_window = [s for s in samples if t0 <= s[0] <= t1]
    return {
        "rss_runner_peak": max(s[2] for s in samples),
        "rss_total_peak": max(s[1] for s in samples),
        "rss_runner_steady": statistics.median(s[2] for s in in_window),
        "rss_total_steady": statistics.median(s[1] for s in in_window),
    }


# ---------------------------------------------------------------- the window


def measure_window(
    emu: Any, tree: ProcessTree, duration: float, target_per_s: float
) -> tuple[float, float, dict[str, Any]]:
    """Sleep through a window of ``duration`` s; returns its start, its end (Unix times) and the
    polls served, the CPU used by the triggerer and the emulator, and the load average."""
    emu_proc = psutil.Process(emu.pid)
    load0 = os.getloadavg()
    emu_cpu0 = sum(emu_proc.cpu_times()[:2])
    cpu0 = tree.cpu_seconds()
    polls0, t0 = status_polls(emu), time.time()
    time.sleep(duration)
    polls1, t1 = status_polls(emu), time.time()
    cpu1 = tree.cpu_seconds()
    emu_cpu1 = sum(emu_proc.cpu_times()[:2])
    window = t1 - t0
    polls = polls1 - polls0
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    return (
        t0,
        t1,
        {
            "polls": polls,
            "polls_per_s": polls / window,
            "target_per_s": target_per_s,
            "cpu_ms_per_poll": 1000 * cpu[0] / polls if polls else float("nan"),
            "runner_cores": cpu[1] / window,
            "others_cores": (cpu[0] - cpu[1]) / window,
            "emulator_cores": (emu_cpu1 - emu_cpu0) / window,
            "load": (load0[0], os.getloadavg()[0]),
        },
    )


def lag_figures(probe_path: Path, t0: float, t1: float) -> dict[str, float]:
    """Loop lag (ms) the probe logged between ``t0`` and ``t1``: percentiles and summed share."""
    lags = [
        float(lag)
        for line in (probe_path.read_text().splitlines() if probe_path.exists() else [])
        for stamp, lag in [line.split()]
        if t0 <= float(stamp) <= t1
    ]
    return {
        "lag_samples": len(lags),
        "lag_p50": pct(lags, 0.5),
        "lag_p99": pct(lags, 0.99),
        "lag_max": max(lags, default=float("nan")),
        "blocked_frac": sum(lags) / 1000 / (t1 - t0),
    }


def log_figures(log_text: str) -> dict[str, int]:
    return {
        "blocked_warnings": log_text.count("async thread was blocked"),
        "trigger_errors": log_text.count("Trigger failed") + log_text.count("Traceback"),
    }


# ---------------------------------------------------------------- the metadata DB


def assigned(engine: sqlalchemy.Engine) -> int:
    """How many triggers a triggerer has taken."""
    with engine.connect() as conn:
        return conn.execute(
            sqlalchemy.text("SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL")
        ).scalar()


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


# ---------------------------------------------------------------- resume


def ended_triggers(specs: list[list[Any]], count: int) -> dict[int, list[str]]:
    """``count`` triggers picked at random (seeded): map_index -> the batch ids it watches."""
    chosen = sorted(random.Random(7).sample(range(len(specs)), min(count, len(specs))))
    return {i: specs[i][1].get("batch_ids") or [specs[i][1]["batch_id"]] for i in chosen}


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


def batches_polled(poll_log: Path, batch_ids: set[str]) -> int:
    """How many of ``batch_ids`` the latency proxy has seen polled at least once."""
    if not poll_log.exists():
        return 0
    seen = {line.partition(" ")[2] for line in poll_log.read_text().splitlines()}
    return len(seen & batch_ids)


def gap_figures(
    poll_log: Path, t0: float, t1: float, batch_ids: list[str], interval: float
) -> dict[str, Any]:
    """Per batch, the longest time between two of its polls in the window, the window's edges
    counting as polls (a batch not polled in the window has a gap of the whole window).
    Starved: batches whose longest gap reached twice the interval."""
    times: dict[str, list[float]] = {b: [] for b in batch_ids}
    if poll_log.exists():
        for line in poll_log.read_text().splitlines():
            stamp, _, batch_id = line.partition(" ")
            if batch_id in times and t0 <= (t := float(stamp)) <= t1:
                times[batch_id].append(t)
    gaps = []
    for polled in times.values():
        edges = [t0, *sorted(polled), t1]
        gaps.append(max(b - a for a, b in itertools.pairwise(edges)))
    return {
        "gap_p50": pct(gaps, 0.5),
        "gap_max": max(gaps, default=float("nan")),
        "starved": sum(g >= 2 * interval for g in gaps),
    }


def resume_figures(
    engine: sqlalchemy.Engine, base_url: str, members: dict[int, list[str]], interval: float, grace: float
) -> dict[str, Any]:
    """End every batch of the ``members`` triggers, wait up to ``interval + grace`` s for their
    TaskInstances; resume = ``updated_at`` of the TaskInstance - the end of its trigger's last batch."""
    chosen = list(members)
    ended = asyncio.run(cancel_all(base_url, [b for group in members.values() for b in group]))
    end_time = {i: max(ended[b] for b in group) for i, group in members.items()}
    wait_until = time.monotonic() + interval + grace
    seen: dict[int, float] = {}
    while time.monotonic() < wait_until and len(seen) < len(chosen):
        seen = resumed_at(engine, chosen)
        time.sleep(0.5)
    delays = [seen[i] - end_time[i] for i in chosen if i in seen]
    return {
        "resumed": len(seen),
        "ended": len(chosen),
        "resume_p50": pct(delays, 0.5),
        "resume_max": max(delays, default=float("nan")),
        "resume_within_interval": sum(d <= interval for d in delays),
    }
