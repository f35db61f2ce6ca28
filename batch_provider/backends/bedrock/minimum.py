"""The minimum number of records a Bedrock job accepts (``min_records_per_job``, Bedrock's quota):
a chunk below it is neither padded (padding pays for fake rows) nor sent.

Invariants:
- The check runs before any upload or paid call; the error names the count, the minimum and what
  to do.
- Before an attempt's first job the attempt's other part files are counted too, so a short last
  chunk stops the run before any job is paid for.
"""

from __future__ import annotations

from batch_provider.core.contract import Chunk
from batch_provider.core.errors import InvalidRequestError


class BelowMinimumRecordsError(InvalidRequestError):
    """A chunk has fewer records than a Bedrock job accepts; nothing was uploaded or created."""

    def __init__(self, count: int, minimum: int, *, part: str | None = None) -> None:
        which = f"the chunk {part}" if part else "this chunk"
        super().__init__(
            f"bedrock: a batch job needs at least {minimum} records, {which} has {count}; nothing "
            "was sent. Bedrock would fail the job in validation, and padding would pay for fake rows. "
            "Send at least that many requests per model, use another provider for small runs, or set "
            "min_records_per_job lower if your account's quota allows it. For a retry of a few "
            "records: close the run (dead letter) and rerun those rows later with others.",
            provider="bedrock",
        )
        self.count = count
        self.minimum = minimum


def check_sibling_parts(chunk: Chunk, minimum: int) -> None:
    """Before the first job of an attempt, refuse when any part file next to ``chunk``'s (the
    attempt's other chunks) is below ``minimum``, so no job is paid for in a run that would
    stop at a later chunk. Best effort: a folder that cannot be listed is not checked."""
    try:
        siblings = [p for p in chunk.path.parent.iterdir() if p.name.endswith(".jsonl")]
    except (AttributeError, OSError, NotImplementedError):
        return
    for part in sorted(siblings, key=lambda p: p.name):
        if part.name == chunk.path.name:
            continue
        count = 0
        with part.open("rb") as fh:
            while block := fh.read(1 << 20):
                count += block.count(b"\n")
        if 0 < count < minimum:
            raise BelowMinimumRecordsError(count, minimum, part=part.name)
