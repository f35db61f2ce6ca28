"""Floors of the throughput benchmark: the least some work on the same bytes costs, timed alone.

A floor's rate bounds what any implementation doing at least that work can reach on this machine;
``throughput.py`` prints each as a ratio to the same run's ``cp``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from batch_provider.core.models import ResultRecord

MB = 1024 * 1024
_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def _line_blocks(sources: list[Path], block_bytes: int = MB) -> Iterator[list[bytes]]:
    for source in sources:
        with source.open("rb") as fh:
            while block := fh.readlines(block_bytes):
                yield block


def codec_floor_s(sources: list[Path]) -> float:
    """Seconds to read ``sources`` and decode and re-encode every line with msgspec, a block of lines
    at a time, doing nothing else: what parsing each line once costs any Python client."""
    started = time.perf_counter()
    for block in _line_blocks(sources):
        _ENCODER.encode_lines(_DECODER.decode_lines(b"".join(block)))
    return time.perf_counter() - started


def objects_floor_s(objects: Iterable[object]) -> float:
    """Seconds to draw every item from ``objects`` and nothing else (for the run's ``LLMRequest``
    generator: what building the submit loop's input costs)."""
    started = time.perf_counter()
    for _ in objects:
        pass
    return time.perf_counter() - started


def result_model_floor_s(results: Path) -> float:
    """Seconds to read every results line into a ``ResultRecord`` and write it back as a line, and
    nothing else: the least a design that hands out one ``ResultRecord`` per result pays."""
    started = time.perf_counter()
    validate = ResultRecord.model_validate_json
    for block in _line_blocks([results]):
        b"".join([validate(line).json_line() for line in block])
    return time.perf_counter() - started
