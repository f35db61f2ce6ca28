"""Child process for the crash tests: runs ``submit_run`` and SIGKILLs itself at one point.

Usage: ``python crash_submit.py '<json args>'`` with keys ``provider``, ``base_url``, ``run_root``,
``run_id``, ``rows``, ``max_requests_per_batch``, ``crash`` (a point name or null) and ``chunk``
(the chunk index the per-chunk points apply to); optional ``text_prefix`` (the first word of every
row's text, so two runs can share row ids and differ in their prompts). Without a crash it writes
the handle it got to ``<run_root>/handle.json`` (what the task would push to XCom) and exits 0.

Points: ``requests_written`` (part files and ledger chunks on disk, nothing sent),
``intent_written`` (the chunk's intent recorded, nothing sent for it), ``file_uploaded``
(OpenAI, Bedrock: the chunk's input file is uploaded, no batch), ``batch_created`` (the
provider answered the create call, the ledger does not know), ``ledger_written`` (the chunk's
batch is in the ledger), ``xcom_pushed`` (the handle was handed over, the task did not finish).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from batch_provider.backends.registry import create_backend
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run

MODELS = {
    "openai": "gpt-6-luna",
    "anthropic": "claude-haiku-4-5",
    "bedrock": "anthropic.claude-haiku-4-5-20251001-v1:0",
    "gemini": "gemini-2.5-flash",
}


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_crash(point: str | None, chunk: int, backend: object) -> None:
    if point is None:
        return
    saves = {"n": 0}
    original_save = Ledger.save

    def save(self: Ledger, run_dir: object) -> None:
        original_save(self, run_dir)
        saves["n"] += 1
        # save 1: chunks; then per chunk k: save 2+2k (intent), save 3+2k (batch recorded)
        if point == "requests_written" and saves["n"] == 1:
            die()
        if point == "intent_written" and saves["n"] == 2 + 2 * chunk:
            die()
        if point == "ledger_written" and saves["n"] == 3 + 2 * chunk:
            die()

    Ledger.save = save  # type: ignore[method-assign]

    cls = type(backend)
    original_submit = cls.submit

    async def submit(self: object, part: object, *, tags: object) -> object:
        ref = await original_submit(self, part, tags=tags)
        if point == "batch_created" and part.index == chunk:  # type: ignore[attr-defined]
            die()
        return ref

    cls.submit = submit  # type: ignore[method-assign]

    if hasattr(cls, "_upload"):
        original_upload = cls._upload

        async def upload(self: object, part: object) -> object:
            uploaded = await original_upload(self, part)
            if point == "file_uploaded" and part.index == chunk:  # type: ignore[attr-defined]
                die()
            return uploaded

        cls._upload = upload  # type: ignore[attr-defined]

    if getattr(cls, "provider", None) is not None and cls.provider.value == "bedrock":
        from batch_provider.backends.bedrock import backend as bedrock

        original_put = bedrock.upload_file
        uploads = {"n": 0}

        async def put(*a: object, **kw: object) -> object:
            done = await original_put(*a, **kw)
            uploads["n"] += 1
            if point == "file_uploaded" and uploads["n"] == chunk + 1:
                die()
            return done

        bedrock.upload_file = put  # type: ignore[assignment]


async def submit_rows(
    backend: Any, provider: str, data: list[dict], run_dir: Any, key: RunKey, per_batch: int
) -> RunHandle:
    """The submit task's work: render ``data`` and submit it in chunks of ``per_batch``."""
    builder = RequestBuilder(template="Classify: {{ text }}", model=MODELS[provider], max_tokens=32)
    async with backend:
        return await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id="llm_test",
            max_requests_per_batch=per_batch,
        )


async def main(args: dict) -> None:
    provider = args["provider"]
    if provider == "bedrock":
        backend = create_backend(provider, **args["backend_options"])
    else:
        backend = create_backend(provider, api_key=args.get("api_key", "test-key"), base_url=args["base_url"])
    install_crash(args.get("crash"), int(args.get("chunk", 0)), backend)
    root = Path(args["run_root"])
    run_dir = run_directory(root, dag_id="crash_dag", run_id=args["run_id"], group="llm")
    key = RunKey(dag_id="crash_dag", task_id="llm.submit", run_id=args["run_id"])
    words = args.get("text_prefix", "row")
    data = [{"id": f"c-{i:04d}", "text": f"{words} {i} " + "word " * (i % 5)} for i in range(args["rows"])]
    for i in args.get("flaky_rows", []):  # a retryable server error on the first attempt
        data[i]["id"] = f"emu-fail500-c-{i:04d}"
        data[i]["text"] += " [[emu:fail500]]"  # the directive reaches the wire in the text
    handle = await submit_rows(backend, provider, data, run_dir, key, args["max_requests_per_batch"])
    (root / "handle.json").write_text(handle.model_dump_json())
    if args.get("crash") == "xcom_pushed":
        die()


async def retry_main(args: dict) -> None:
    """The retry task: resubmit the retryable errors of the collected attempt in
    ``<run_root>/handle.json``; writes the new attempt's handle to ``<run_root>/retry_handle.json``."""
    from batch_provider.core.handle import RunHandle
    from batch_provider.core.retry import resubmit_retryable

    provider = args["provider"]
    backend = create_backend(provider, api_key="test-key", base_url=args["base_url"])
    install_crash(args.get("crash"), int(args.get("chunk", 0)), backend)
    root = Path(args["run_root"])
    handle = RunHandle.model_validate_json((root / "handle.json").read_text())
    run_dir = run_directory(root, dag_id="crash_dag", run_id=args["run_id"], group="llm")
    key = RunKey(dag_id="crash_dag", task_id="llm.submit", run_id=args["run_id"])
    async with backend:
        new = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
    assert new is not None
    (root / "retry_handle.json").write_text(new.model_dump_json())
    if args.get("crash") == "xcom_pushed":
        die()


if __name__ == "__main__":
    ARGS = json.loads(sys.argv[1])
    asyncio.run(retry_main(ARGS) if ARGS.get("phase") == "retry" else main(ARGS))
