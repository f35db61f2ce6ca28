"""The child side of ``bench/peers.py``: one ``dag.test()`` run in a process of its own, its phases
timed inside the tasks' ``execute`` (and profiled with ``PEERS_PROFILE``), and what it leaves
measured: result storage, XCom, task spans, rows accounted."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree(root: Path) -> tuple[int, int]:
    """(bytes, files) under ``root``."""
    size = files = 0
    for path in root.rglob("*"):
        if path.is_file():
            size += path.stat().st_size
            files += 1
    return size, files


def _xcom_bytes(dag_id: str, run_id: str) -> int:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id).all()
        return sum(len(v if isinstance(v, (str, bytes)) else json.dumps(v)) for v in (r.value for r in rows))


def _task_seconds(dag_id: str, run_id: str) -> dict[str, float]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).all()
        spans: dict[str, float] = {}
        for ti in tis:
            name = ti.task_id.rsplit(".", 1)[-1]
            if ti.start_date and ti.end_date:
                spans[name] = spans.get(name, 0.0) + (ti.end_date - ti.start_date).total_seconds()
        return spans


def _profiling() -> Any:
    """A started cProfile when ``PEERS_PROFILE`` asks for one, else None."""
    if not os.environ.get("PEERS_PROFILE"):
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _dump(profiler: Any, name: str) -> None:
    if profiler is not None:
        profiler.disable()
        side = os.environ.get("PEERS_SIDE", "side")
        profiler.dump_stats(Path(os.environ["PEERS_PROFILE"]) / f"{side}-{os.environ['PEERS_N']}-{name}.prof")


def _timed(owner: Any, name: str, phases: dict[str, float], phase: str | None, started: list[Any]) -> None:
    """Wrap ``owner.name`` to add its duration to ``phases[phase]``; ``phase=None`` only marks when
    a task's ``execute`` started (``started``: the time and the phase's profiler), for a phase
    ending inside it. Timing only."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        profiler = _profiling()
        t0 = time.perf_counter()
        if phase is None:
            started.append((t0, profiler))
        try:
            return original(*args, **kwargs)
        finally:
            if phase is not None:
                phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t0
                _dump(profiler, f"{phase}-{owner.__name__}")

    setattr(owner, name, wrapper)


def _instrument(side: str, phases: dict[str, float]) -> None:
    """Time each side's phases inside its tasks' ``execute`` (Airflow's own per-task overhead is
    reported apart, as task time). common-ai does all three in one task: submit runs from its
    ``execute`` start to the adapter's submit answer, wait is its poll loop, collect its result
    landing. Ours: the submit, wait (sensor) and collect + retry tasks' ``execute``."""
    started: list[Any] = []
    if side == "theirs":
        from airflow.providers.common.ai.batch.openai import OpenAIBatchAdapter
        from airflow.providers.common.ai.decorators.llm_batch import _LLMBatchDecoratedOperator
        from airflow.providers.common.ai.operators.llm_batch import LLMBatchOperator

        _timed(_LLMBatchDecoratedOperator, "execute", phases, None, started)
        submit = OpenAIBatchAdapter.submit

        def submitted(*args: Any, **kwargs: Any) -> Any:
            try:
                return submit(*args, **kwargs)
            finally:
                t0, profiler = started.pop()
                phases["submit"] = phases.get("submit", 0.0) + time.perf_counter() - t0
                _dump(profiler, "submit")

        OpenAIBatchAdapter.submit = submitted  # type: ignore[method-assign]
        _timed(LLMBatchOperator, "_poll_sync", phases, "wait", started)
        _timed(LLMBatchOperator, "_land", phases, "collect", started)
        return
    from batch_provider.decorators.batch_llm import BatchLLMSubmitOperator
    from batch_provider.operators.collect import CollectBatchOperator
    from batch_provider.operators.retry import RetryBatchOperator
    from batch_provider.sensors.batch import BatchSensor

    _timed(BatchLLMSubmitOperator, "execute", phases, "submit", started)
    _timed(BatchSensor, "execute", phases, "wait", started)
    _timed(CollectBatchOperator, "execute", phases, "collect", started)
    _timed(RetryBatchOperator, "execute", phases, "collect", started)


def child(side: str, n: int, day: int) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    from airflow.providers.common.ai.operators import llm_batch

    # the same poll floor on both sides: common-ai refuses poll_interval < 30 s (the bench file
    # holds both DAGs, so every side's process lowers it before loading them)
    llm_batch._MIN_POLL_INTERVAL = 0
    phases: dict[str, float] = {}
    _instrument(side, phases)
    import importlib.util

    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "peers_dags.py"
    spec = importlib.util.spec_from_file_location("peers_dags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.theirs if side == "theirs" else module.ours
    rss_before = _rss_mb()

    started = time.perf_counter()
    run = dag.test(logical_date=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day))
    total = time.perf_counter() - started
    peak = _rss_mb()
    state = str(run.state)

    spans = _task_seconds(dag.dag_id, run.run_id)
    root = Path(os.environ["PEERS_RESULTS"].removeprefix("file://"))
    size, files = tree(root)
    cache_size, cache_files = tree(root / "_cache") if (root / "_cache").exists() else (0, 0)
    return {
        "side": side,
        "requests": n,
        "state": state,
        "accounted": _accounted(side, dag.dag_id, run.run_id),
        "phases": phases,
        "total_s": total,
        "task_s": sum(spans.values()),
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - rss_before,
        "bytes_left": size,
        "files_left": files,
        "cache_bytes": cache_size,
        "cache_files": cache_files,
        "xcom_bytes": _xcom_bytes(dag.dag_id, run.run_id),
    }


def _accounted(side: str, dag_id: str, run_id: str) -> int:
    """Rows with a final answer: succeeded rows of common-ai's manifests, or our run summary's."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, key="return_value").all()
        # ours: the retry task's summary is the run's final word (collect's is the first attempt's)
        values = [
            json.loads(r.value) if isinstance(r.value, str) else r.value
            for r in rows
            if side == "theirs" or r.task_id.endswith(".retry")
        ]
    if side == "theirs":
        return sum(v["counts"]["succeeded"] for v in values if isinstance(v, dict) and "counts" in v)
    return sum(v["succeeded"] for v in values if isinstance(v, dict) and "succeeded" in v)
