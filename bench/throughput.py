"""End-to-end throughput and memory of split → submit → wait → collect against the emulator.

For each ``--requests`` size and ``--prompt-chars`` ticket length, a fresh child process (so
``ru_maxrss`` is that run's own peak): starts the emulator (outputs written at finalize, as a
provider's are ready when it says ``completed``), generates chat requests, splits them into part
files (chunks by the provider's limits), submits every chunk, advances the emulator clock until
every batch ended, and collects every batch through :func:`reconcile` into ``results.jsonl``. It
prints MB/s of each phase next to a raw ``cp`` of the same bytes on the same disk in the same run,
and peak RSS.

- submit MB/s = part-file bytes ÷ (split + upload) seconds; split includes building the
  ``LLMRequest`` objects, as rendering would in a real run;
- collect MB/s = ``results.jsonl`` bytes ÷ (download + parse + reconcile + write) seconds;
- "client CPU only" divides the same bytes by this process's CPU seconds in the phase, i.e. the
  rate the client side would reach if the server answered instantly.

    .venv/bin/python bench/throughput.py --requests 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _floors import codec_floor_s, objects_floor_s, result_model_floor_s

from batch_provider.backends.anthropic.backend import AnthropicBackend
from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.core.contract import BatchBackend, Chunk
from batch_provider.core.models import BatchRef, LLMRequest
from batch_provider.core.reconcile import expected_ids, reconcile
from batch_provider.core.split import split_requests
from batch_provider.emulator.process import running_emulator

MB = 1024 * 1024
KEY = "sk-bench-key"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SYSTEM = "Classify the ticket as positive, neutral or negative. Answer with one word."
WORDS = (
    "the",
    "delivery",
    "was",
    "late",
    "but",
    "support",
    "was",
    "helpful",
    "and",
    "the",
    "refund",
    "arrived",
    "within",
    "two",
    "days",
    "after",
    "I",
    "asked",
    "again",
    "about",
    "my",
    "order",
    "number",
    "which",
    "showed",
    "as",
    "shipped",
    "although",
    "nothing",
    "came",
)


def ticket_texts(prompt_chars: int, variants: int = 64) -> list[str]:
    """``variants`` distinct ticket bodies of about ``prompt_chars`` characters each."""
    texts = []
    for v in range(variants):
        words: list[str] = []
        length = 0
        i = v
        while length < prompt_chars:
            word = WORDS[(i * 7 + v) % len(WORDS)]
            words.append(word)
            length += len(word) + 1
            i += 1
        texts.append(" ".join(words)[:prompt_chars])
    return texts


def requests(count: int, model: str, prompt_chars: int) -> Iterator[LLMRequest]:
    texts = ticket_texts(prompt_chars)
    for i in range(count):
        yield LLMRequest(
            custom_id=f"req-{i:08d}",
            model=model,
            system=SYSTEM,
            messages=[{"role": "user", "content": f"Ticket {i}: {texts[i % len(texts)]}"}],
            max_tokens=16,
        )


def part_files(path: Path) -> list[Path]:
    """The part files (the bytes uploaded), without their ids sidecars."""
    return sorted(path.glob("*.jsonl"))


def timed_cp(sources: list[Path], target: Path) -> float:
    """Seconds for ``cp`` of ``sources`` into ``target`` plus ``sync`` (target removed first and after)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run(["sync"], check=False)  # flush what the benchmark wrote, so cp pays for its bytes only
    started = time.perf_counter()
    subprocess.run(["cp", *map(str, sources), str(target)], check=True)
    subprocess.run(["sync", "-f", str(target)], check=False)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


async def submit_chunks(backend: BatchBackend, chunks: list[Chunk], concurrency: int) -> list[BatchRef]:
    gate = asyncio.Semaphore(concurrency)

    async def one(chunk: Chunk) -> BatchRef:
        async with gate:
            return await backend.submit(chunk, tags={"bench": "throughput"})

    return list(await asyncio.gather(*(one(c) for c in chunks)))


async def wait_all(backend: BatchBackend, refs: list[BatchRef], emu) -> dict[str, object]:
    emu.advance(100_000)
    states = {}
    pending = list(refs)
    while pending:
        for ref in list(pending):
            state = await backend.status(ref.batch_id)
            if state.is_terminal:
                states[ref.batch_id] = state
                pending.remove(ref)
        if pending:
            await asyncio.sleep(0.2)
    return states


async def collect(
    backend: BatchBackend,
    refs: list[BatchRef],
    chunks: list[Chunk],
    states: dict,
    out: Path,
    concurrency: int,
) -> Counter[str]:
    """Reconcile every batch into ``out``; ``concurrency`` batches download at once."""
    counts: Counter[str] = Counter()
    by_index = {c.index: c for c in chunks}
    gate = asyncio.Semaphore(concurrency)
    with out.open("wb", buffering=1 << 20) as fh:

        async def one(ref: BatchRef) -> None:
            async with gate:
                expected = await asyncio.to_thread(expected_ids, by_index[ref.chunk_index].path, backend)
                async for record in reconcile(ref, expected, states[ref.batch_id], backend.results(ref)):
                    counts[record.status] += 1
                    fh.write(record.json_line())

        await asyncio.gather(*(one(r) for r in refs))
    return counts


async def run_once(
    count: int, prompt_chars: int, provider: str, workdir: Path, concurrency: int, collect_concurrency: int
) -> dict[str, float | int | str]:
    parts = workdir / "parts"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    extra = ["--log-level", "warning", "--per-request-seconds", "0.01", "--outputs-at-finalize"]
    with running_emulator(time_factor=600.0, extra_args=extra) as emu:
        backend: BatchBackend
        if provider == "openai":
            backend = OpenAIBackend(KEY, emu.base_url + "/v1")
            model = "gpt-6-luna"
        else:
            backend = AnthropicBackend(KEY, emu.base_url)
            model = "claude-haiku-4-5"
        async with backend:
            figures: dict[str, float | int | str] = {
                "requests": count,
                "prompt_chars": prompt_chars,
                "provider": provider,
            }
            started = time.perf_counter()
            cpu_started = time.process_time()
            rss_at_100k = 0.0
            chunks: list[Chunk] = []
            stream = split_requests(requests(count, model, prompt_chars), backend, parts)
            for chunk in stream:
                chunks.append(chunk)
                if not rss_at_100k and stream.counts.inputs >= 100_000:
                    rss_at_100k = peak_rss_mb()
            split_s = time.perf_counter() - started
            part_bytes = sum(p.stat().st_size for p in part_files(parts))
            started = time.perf_counter()
            refs = await submit_chunks(backend, chunks, concurrency)
            upload_s = time.perf_counter() - started
            submit_cpu_s = time.process_time() - cpu_started
            figures.update(
                chunks=len(chunks),
                part_mb=part_bytes / MB,
                split_s=split_s,
                upload_s=upload_s,
                rss_split_100k_mb=rss_at_100k or peak_rss_mb(),
                rss_after_submit_mb=peak_rss_mb(),
            )
            cp_parts_s = timed_cp(part_files(parts), workdir / "parts.cp")

            started = time.perf_counter()
            states = await wait_all(backend, refs, emu)
            figures["wait_s"] = time.perf_counter() - started

            results = workdir / "results.jsonl"
            started = time.perf_counter()
            cpu_started = time.process_time()
            counts = await collect(backend, refs, chunks, states, results, collect_concurrency)
            collect_s = time.perf_counter() - started
            collect_cpu_s = time.process_time() - cpu_started
            result_bytes = results.stat().st_size
            cp_results_s = timed_cp([results], workdir / "results.cp")
            assert sum(counts.values()) == count, counts
            figures.update(
                collect_s=collect_s,
                results_mb=result_bytes / MB,
                cp_parts_mb_s=part_bytes / MB / cp_parts_s,
                cp_results_mb_s=result_bytes / MB / cp_results_s,
                submit_mb_s=part_bytes / MB / (split_s + upload_s),
                split_mb_s=part_bytes / MB / split_s,
                upload_mb_s=part_bytes / MB / upload_s,
                collect_mb_s=result_bytes / MB / collect_s,
                submit_cpu_mb_s=part_bytes / MB / submit_cpu_s,
                collect_cpu_mb_s=result_bytes / MB / collect_cpu_s,
                counts=json.dumps(dict(counts)),
                peak_rss_mb=peak_rss_mb(),
            )
            figures["submit_ratio"] = float(figures["submit_mb_s"]) / float(figures["cp_parts_mb_s"])
            figures["collect_ratio"] = float(figures["collect_mb_s"]) / float(figures["cp_results_mb_s"])
            # Floors are measured last, so their memory stays out of the peak RSS above.
            floors = {
                "floor_requests_codec": (part_bytes, codec_floor_s(part_files(parts))),
                "floor_requests_model": (part_bytes, objects_floor_s(requests(count, model, prompt_chars))),
                "floor_results_codec": (result_bytes, codec_floor_s([results])),
                "floor_results_model": (result_bytes, result_model_floor_s(results)),
            }
            for name, (size, timing) in floors.items():
                cp_mb_s = figures["cp_parts_mb_s" if "requests" in name else "cp_results_mb_s"]
                figures[name + "_mb_s"] = size / MB / timing.wall_s
                figures[name + "_cpu_mb_s"] = size / MB / timing.cpu_s
                figures[name + "_ratio"] = size / MB / timing.wall_s / float(cp_mb_s)
            # The target: each phase at >= 0.7 of the msgspec floor on the same lines, on wall time
            # and on CPU time alone (what other jobs on the cores cannot skew).
            for phase, side in (("submit", "requests"), ("collect", "results")):
                codec = f"floor_{side}_codec"
                figures[f"{phase}_of_codec"] = float(figures[f"{phase}_mb_s"]) / figures[codec + "_mb_s"]
                figures[f"{phase}_cpu_of_codec"] = (
                    float(figures[f"{phase}_cpu_mb_s"]) / figures[codec + "_cpu_mb_s"]
                )
    shutil.rmtree(workdir, ignore_errors=True)
    return figures


def report(figures: dict) -> None:
    n = figures["requests"]
    print(
        f"\n== {n:,} {figures['provider']} requests with {figures['prompt_chars']:,}-character tickets "
        f"({figures['part_mb'] * MB / n:,.0f} B per request line, "
        f"{figures['results_mb'] * MB / n:,.0f} B per result line), {figures['chunks']} chunks =="
    )
    print(
        f"submit : {figures['part_mb']:8.1f} MB in {figures['split_s'] + figures['upload_s']:7.1f}s "
        f"= {figures['submit_mb_s']:7.1f} MB/s   (split {figures['split_mb_s']:.1f} MB/s, "
        f"upload {figures['upload_mb_s']:.1f} MB/s)   cp {figures['cp_parts_mb_s']:7.1f} MB/s   "
        f"ratio {figures['submit_ratio']:.3f}   (client CPU only: {figures['submit_cpu_mb_s']:.1f} MB/s)"
    )
    print(
        f"collect: {figures['results_mb']:8.1f} MB in {figures['collect_s']:7.1f}s "
        f"= {figures['collect_mb_s']:7.1f} MB/s   cp {figures['cp_results_mb_s']:7.1f} MB/s   "
        f"ratio {figures['collect_ratio']:.3f}   (client CPU only: {figures['collect_cpu_mb_s']:.1f} MB/s)"
    )
    for side, work in (("requests", "building LLMRequest objects"), ("results", "ResultRecord in + out")):
        model, codec = f"floor_{side}_model", f"floor_{side}_codec"
        print(
            f"floor  : {side} lines, nothing but {work}: {figures[model + '_mb_s']:.1f} MB/s "
            f"(ratio {figures[model + '_ratio']:.3f}, CPU only {figures[model + '_cpu_mb_s']:.1f}); "
            f"msgspec decode + encode: {figures[codec + '_mb_s']:.1f} MB/s "
            f"(ratio {figures[codec + '_ratio']:.3f}, CPU only {figures[codec + '_cpu_mb_s']:.1f})"
        )
    print(
        f"of the msgspec floor (target >= 0.7): submit {figures['submit_of_codec']:.2f} wall, "
        f"{figures['submit_cpu_of_codec']:.2f} CPU; collect {figures['collect_of_codec']:.2f} wall, "
        f"{figures['collect_cpu_of_codec']:.2f} CPU"
    )
    print(f"wait   : {figures['wait_s']:.1f}s   records {figures['counts']}")
    print(
        f"peak RSS: after 100k split {figures['rss_split_100k_mb']:.0f} MB, after submit "
        f"{figures['rss_after_submit_mb']:.0f} MB, end of run {figures['peak_rss_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--prompt-chars",
        type=int,
        nargs="+",
        default=[60, 1200],
        help="ticket length per request (each size is its own run): 60 is a one-line ticket, "
        "1200 a ticket of a few paragraphs",
    )
    parser.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--concurrency", type=int, default=4, help="chunks uploaded at once")
    parser.add_argument(
        "--collect-concurrency",
        type=int,
        default=2,
        help="batches collected at once (peak RSS grows with it: one batch's id sets each)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(__file__).resolve().parents[1] / ".tmp" / "bench"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        figures = asyncio.run(
            run_once(
                args.requests[0],
                args.prompt_chars[0],
                args.provider,
                args.workdir,
                args.concurrency,
                args.collect_concurrency,
            )
        )
        print("FIGURES " + json.dumps(figures), flush=True)
        return
    rows = []
    for prompt_chars, count in itertools.product(args.prompt_chars, args.requests):
        cmd = [sys.executable, __file__, "--child", "--requests", str(count), "--provider", args.provider]
        cmd += ["--prompt-chars", str(prompt_chars)]
        cmd += [
            "--concurrency",
            str(args.concurrency),
            "--collect-concurrency",
            str(args.collect_concurrency),
        ]
        cmd += ["--workdir", str(args.workdir / f"n{count}-p{prompt_chars}")]
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("FIGURES "))
        figures = json.loads(line.removeprefix("FIGURES "))
        report(figures)
        rows.append(figures)
    if len(rows) > 1:
        print(
            "\npeak RSS by size: "
            + ", ".join(
                f"{r['requests']:,} × {r['prompt_chars']:,} chars: {r['peak_rss_mb']:.0f} MB" for r in rows
            )
        )


if __name__ == "__main__":
    main()
