"""Completion-time history: p50/p95 by request count, what is recorded, bounded files, keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batch_provider.core.history import (
    MAX_ENTRIES,
    CompletionHistory,
    HistoryEntry,
    Timeline,
    estimate_for,
    key_of_run_folder,
    percentile,
    record_completed,
)

T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


@dataclass
class Figure:
    batch_id: str
    model: str | None
    request_count: int
    ending: str | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None


def figure(batch_id: str, seconds: float, *, requests: int = 100, ending: str = "completed"):
    return Figure(batch_id, "gpt-4o-mini", requests, ending, T0, None, T0 + timedelta(seconds=seconds))


def run_folder(root: Path, run_id: str, group: str = "tickets") -> Path:
    folder = root / "nightly" / run_id / group
    folder.mkdir(parents=True)
    return folder


def test_p50_and_p95_come_from_the_recorded_runs(tmp_path):
    times = [600, 660, 720, 780, 840, 900, 960, 1020, 1080, 3600]
    for i, seconds in enumerate(times):
        assert record_completed(run_folder(tmp_path, f"run-{i}"), "openai", [figure(f"b{i}", seconds)]) == 1
    estimate = estimate_for(tmp_path / "nightly" / "run-x" / "tickets", "openai", "gpt-4o-mini", 100)
    assert estimate is not None and estimate.samples == 10
    assert estimate.p50_seconds == 840 and estimate.p95_seconds == 3600  # nearest rank
    assert estimate.phrase() == "usually done in 14m00s (p95 1h00m)"


def test_similar_sizes_are_preferred_when_there_are_enough():
    history = CompletionHistory()
    history.add(HistoryEntry(batch_id=f"s{i}", requests=100, seconds=60.0 + i) for i in range(3))
    history.add(HistoryEntry(batch_id=f"l{i}", requests=50_000, seconds=7200.0 + i) for i in range(3))
    small, large = history.estimate(120), history.estimate(40_000)
    assert small.p95_seconds == 62 and small.samples == 3
    assert large.p50_seconds == 7201 and large.samples == 3
    assert history.estimate(3000).samples == 6  # nothing close enough: every batch counts
    assert CompletionHistory().estimate(100) is None


def test_only_completed_batches_count_and_each_once(tmp_path):
    folder = run_folder(tmp_path, "run-1")
    batches = [
        figure("done", 600),
        figure("expired", 86_400, ending="expired"),
        figure("cancelled", 30, ending="cancelled"),
        Figure("no-end", "gpt-4o-mini", 5, "completed", T0, None, None),
    ]
    assert record_completed(folder, "openai", batches) == 1
    assert record_completed(folder, "openai", batches) == 0  # collecting again adds nothing
    root, key = key_of_run_folder(folder, "openai", "gpt-4o-mini")
    (entry,) = CompletionHistory.load(key.path(root)).entries
    assert entry.batch_id == "done" and entry.seconds == 600


def test_the_file_is_bounded_and_keeps_the_newest(tmp_path):
    folder = run_folder(tmp_path, "run-1")
    record_completed(folder, "openai", [figure(f"b{i:04d}", 100 + i) for i in range(MAX_ENTRIES + 50)])
    root, key = key_of_run_folder(folder, "openai", "gpt-4o-mini")
    entries = CompletionHistory.load(key.path(root)).entries
    assert len(entries) == MAX_ENTRIES and entries[0].batch_id == "b0050"
    assert not list(key.path(root).parent.glob("*.tmp*"))


def test_mapped_groups_share_one_history_beside_the_run_folders(tmp_path):
    folder = run_folder(tmp_path, "run-1", "tickets.map-3")
    root, key = key_of_run_folder(folder, "anthropic", None)
    assert root == tmp_path and key.group == "tickets" and key.model == "default"
    assert key.path(root) == tmp_path / "_history" / "nightly" / "tickets" / "anthropic--default.json"


def test_a_broken_history_is_an_empty_one(tmp_path):
    path = tmp_path / "h.json"
    path.write_text("{not json")
    assert CompletionHistory.load(path).entries == []


def test_timeline_splits_queue_and_processing():
    timeline = Timeline(T0, T0 + timedelta(minutes=40), T0 + timedelta(minutes=55))
    assert timeline.queue_seconds == 2400 and timeline.processing_seconds == 900
    assert timeline.completion_seconds == 3300
    assert Timeline(T0, None, T0 + timedelta(minutes=5)).queue_seconds is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([5.0], 95) == 5.0
