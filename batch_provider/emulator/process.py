"""Run the emulator as a real subprocess (for tests and benchmarks).

``running_emulator()`` starts ``python -m batch_provider.emulator`` on a free port, waits for
``GET /_emu/health`` and stops the process on exit. State always lives in a data directory (a
temporary one unless given), so :meth:`EmulatorProcess.restart` keeps batches and files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


class EmulatorProcess:
    def __init__(
        self,
        *,
        time_factor: float = 600.0,
        data_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        extra_args: Sequence[str] = (),
        port: int = 0,
        startup_timeout: float = 30.0,
        with_s3: bool = False,
        with_gcs: bool = False,
    ) -> None:
        self.time_factor = time_factor
        self.seed = seed
        self.extra_args = list(extra_args)
        self.port = port
        self.startup_timeout = startup_timeout
        self.with_s3 = with_s3
        self.with_gcs = with_gcs
        self._own_dir = data_dir is None
        self._work = Path(tempfile.mkdtemp(prefix="emu-proc-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self._work / "data"
        self.log_path = self._work / "emulator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> EmulatorProcess:
        port_file = self._work / "port"
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "batch_provider.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--port-file",
            str(port_file),
            "--time-factor",
            repr(float(self.time_factor)),
            "--seed",
            str(self.seed),
            "--data-dir",
            str(self.data_dir),
            *(["--with-s3"] if self.with_s3 else []),
            *(["--with-gcs"] if self.with_gcs else []),
            *self.extra_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_REPO_ROOT)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log_tail()}")
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                try:
                    if httpx.get(self.base_url + "/_emu/health", timeout=1.0).status_code == 200:
                        self._client = httpx.Client(base_url=self.base_url, timeout=30.0)
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"emulator did not become healthy in {self.startup_timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> EmulatorProcess:
        """Stop, then start again on the same port with the same data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> EmulatorProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ control API

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        if self._client is None:
            raise RuntimeError("the emulator is not running")
        resp = self._client.request(method, path, **kw)
        resp.raise_for_status()
        return resp.json()

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_emu/stats")

    def advance(self, seconds: float) -> float:
        """Move the emulated clock forward; returns the new emulated time (Unix seconds)."""
        return float(self._call("POST", "/_emu/advance", params={"seconds": seconds})["now"])

    def now(self) -> float:
        return float(self._call("GET", "/_emu/clock")["now"])

    def set_faults(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Replace the server-wide fault settings (see faults.py / README for the keys)."""
        return self._call("POST", "/_emu/faults", json=spec)

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "/_emu/faults")

    def clear_faults(self) -> dict[str, Any]:
        return self._call("DELETE", "/_emu/faults")

    def set_queue_delay(self, **settings: Any) -> dict[str, Any]:
        """Change the queue delay (``seconds``, ``max_seconds``, ``next``, ``per_batch``; see
        queue_delay.py): how long new batches wait before processing starts."""
        return self._call("POST", "/_emu/queue_delay", json=settings)

    def reset(self) -> None:
        """Drop all batches, files, counters and server-wide faults."""
        self._call("POST", "/_emu/reset")

    @property
    def s3_endpoint(self) -> str | None:
        """moto's S3 endpoint serving the Bedrock face (set when started ``with_s3``)."""
        return self._call("GET", "/_emu/bedrock").get("s3_endpoint")

    def bedrock_settings(self, **values: Any) -> dict[str, Any]:
        """Read, or change, the Bedrock settings (``min_records=10``, ``max_jobs_in_flight=2`` ...)."""
        if values:
            return self._call("POST", "/_emu/bedrock", json=values)
        return self._call("GET", "/_emu/bedrock")

    def sync_settings(self, bodies: bool = False, **values: Any) -> dict[str, Any]:
        """Read, or change, the synchronous endpoints' limits and counts (``rpm=5``,
        ``window_seconds=1`` ...); ``bodies`` adds the answers per body hash."""
        if values:
            self._call("POST", "/_emu/sync", json=values)
        return self._call("GET", "/_emu/sync", params={"bodies": "1"} if bodies else None)

    @property
    def gcs_endpoint(self) -> str | None:
        """The GCS endpoint serving the Vertex face (set when started ``with_gcs``)."""
        return self._call("GET", "/_emu/vertex").get("gcs_endpoint")

    def vertex_settings(self, **values: Any) -> dict[str, Any]:
        """Read, or change, the Vertex settings (``expire_seconds=...``, ``lines_per_file=2`` ...)."""
        if values:
            return self._call("POST", "/_emu/vertex", json=values)
        return self._call("GET", "/_emu/vertex")

    def synthetic(self, requests: int, text_bytes: int) -> dict[str, Any]:
        return self._call("POST", "/_emu/synthetic", json={"requests": requests, "text_bytes": text_bytes})


@contextlib.contextmanager
def running_emulator(
    *,
    time_factor: float = 600.0,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    extra_args: Sequence[str] = (),
    port: int = 0,
    with_s3: bool = False,
    with_gcs: bool = False,
) -> Iterator[EmulatorProcess]:
    """Start the emulator subprocess, yield it once healthy, stop it on exit. ``with_s3`` also
    starts moto's S3 for Bedrock jobs (``.s3_endpoint``), ``with_gcs`` a GCS emulator for Vertex
    jobs (``.gcs_endpoint``)."""
    emu = EmulatorProcess(
        time_factor=time_factor,
        data_dir=data_dir,
        seed=seed,
        extra_args=extra_args,
        port=port,
        with_s3=with_s3,
        with_gcs=with_gcs,
    )
    try:
        emu.start()
        yield emu
    finally:
        emu.close()
