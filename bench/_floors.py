"""Floors of the throughput benchmark: the least some work on the same bytes costs, timed alone.

A floor's rate bounds what any implementation doing at least that work can reach on this machine;
``throughput.py`` prints each as a ratio to the same run's ``cp``. Each floor is timed twice over:
wall clock and this process's CPU time, so a phase can be compared with its floor on CPU time
alone when other jobs share the cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

from batch_provider.core.models import ResultRecord

MB = 1024 * 1024
_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


class Timing(NamedTuple):
    wall_s: float
    cpu_s: float


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Timing:
        return Timing(time.perf_counter() - self.wall, time.process_time() - self.cpu)


def _line_blocks(sources: list[Path], block_bytes: int = MB) -> Iterator[list[bytes]]:
    for source in sources:
        with source.open("rb") as fh:
            while block := fh.readlines(block_bytes):
                yield block


def codec_floor_s(sources: list[Path]) -> Timing:
    """Wall and CPU seconds to read ``sources`` and decode and re-encode every line with msgspec,
    a block of lines at a time, doing nothing else: what parsing each line once costs any client."""
    clock = _Clock()
    for block in _line_blocks(sources):
        _ENCODER.encode_lines(_DECODER.decode_lines(b"".join(block)))
    return clock.stop()


def objects_floor_s(objects: Iterable[object]) -> Timing:
    """Wall and CPU seconds to draw every item from ``objects`` and nothing else (for the run's ``LLMRequest``
    generator: what building the submit loop's input costs)."""
    clock = _Clock()
    for _ in objects:
        pass
    return clock.stop()


def result_model_floor_s(results: Path) -> Timing:
    """Wall and CPU seconds to read every results line into a ``ResultRecord`` and write it back as
    a line, and nothing else: the least a design that hands out one ``ResultRecord`` per result pays."""
    clock = _Clock()
    validate = ResultRecord.model_validate_json
    for block in _line_blocks([results]):
        b"".join([validate(line).json_line() for line in block])
    return clock.stop()
