"""Local processes that each lead a process group of their own (the services of ``distributed.py``).

:class:`ProcessGroups` starts a command with its output in ``<logs>/<name>.log`` and records every
pid in ``<workdir>/pids.json``; it waits for a condition while failing fast when a process dies,
SIGKILLs one group (no clean shutdown), stops them all (SIGTERM, then SIGKILL of whatever is left of
each group: task supervisors and Celery pool processes may outlive their leader) and measures the
PSS of each group. :func:`free_port` picks a loopback port for a service.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    log: Path
    killed: bool = False


class ProcessGroups:
    """The processes started in ``workdir`` (their working directory), by name."""

    def __init__(self, workdir: Path, logs: Path) -> None:
        self.workdir = workdir
        self.logs = logs
        self.components: dict[str, Component] = {}

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Component:
        log = self.logs / f"{name}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.workdir,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        comp = Component(name, proc, log)
        self.components[name] = comp
        (self.workdir / "pids.json").write_text(
            json.dumps({n: c.proc.pid for n, c in self.components.items()}, indent=1)
        )
        return comp

    def alive(self, name: str) -> bool:
        return self.components[name].proc.poll() is None

    def wait_for(self, probe: Callable[[], Any], timeout: float, message: str, interval: float = 0.5) -> Any:
        """Call ``probe`` until it returns something true, and return that; raise as soon as a
        process that was not killed on purpose exits, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for comp in self.components.values():
                if comp.proc.poll() is not None and not comp.killed:
                    raise RuntimeError(
                        f"{comp.name} exited with {comp.proc.returncode}:\n{self.tail(comp.name)}"
                    )
            value = probe()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"{message} within {timeout:.0f}s\n{self.tail()}")

    def wait_http(self, url: str, name: str, timeout: float = 60) -> None:
        """Wait until ``url`` answers below 500 (the component ``name`` serves it)."""

        def ok() -> bool:
            comp = self.components.get(name)
            if comp is not None and comp.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {comp.proc.returncode}:\n{self.tail(name)}")
            try:
                return httpx.get(url, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        self.wait_for(ok, timeout, f"{name} did not answer on {url}")

    def tail(self, name: str | None = None, chars: int = 2500) -> str:
        """The end of one component's log, or of every log."""
        names = [name] if name else list(self.components)
        out = []
        for n in names:
            path = self.logs / f"{n}.log"
            if path.exists():
                out.append(f"--- {n}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def kill(self, name: str) -> None:
        """SIGKILL a component and its whole process group: no clean shutdown, no last heartbeat."""
        comp = self.components[name]
        comp.killed = True
        os.killpg(comp.proc.pid, signal.SIGKILL)
        comp.proc.wait(timeout=10)

    def stop_all(self, grace: float = 20) -> None:
        """SIGTERM every live group, give them ``grace`` seconds in all, then SIGKILL each group."""
        alive = [c for c in self.components.values() if c.proc.poll() is None]
        for comp in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for comp in self.components.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # children (task supervisors, Celery pool processes) may outlive their leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(comp.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(timeout=5)

    def memory_mb(self) -> dict[str, float]:
        """PSS of each component's process group, in MB (from /proc/<pid>/smaps_rollup)."""
        groups: dict[int, str] = {c.proc.pid: c.name for c in self.components.values() if not c.killed}
        totals: dict[str, float] = dict.fromkeys(groups.values(), 0.0)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                pgid = os.getpgid(int(entry.name))
                if pgid not in groups:
                    continue
                for line in (entry / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        totals[groups[pgid]] += int(line.split()[1]) / 1024
            except (OSError, ProcessLookupError, ValueError):
                continue
        return {k: round(v, 1) for k, v in totals.items()}
