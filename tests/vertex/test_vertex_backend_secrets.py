"""The Vertex access token travels only in the Authorization header: not in the run folder, the
logs, the backend's repr, the staged input or the job the emulator keeps; and a service-account
key that cannot be read fails without echoing it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_support import assert_accounted, backend_for, jobs_url, make_bucket, rows, submit_rows, wait_all

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.rundir import run_directory
from batch_provider.emulator.process import EmulatorProcess, running_emulator

TOKEN = "ya29.canary-token-7f3e9c1d"


@pytest.fixture(scope="module")
def secrets_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        make_bucket(emu)
        yield emu


async def test_the_token_reaches_no_file_log_or_resource(
    secrets_emulator: EmulatorProcess, tmp_path: Path, caplog: Any
) -> None:
    from google.oauth2.credentials import Credentials

    emu = secrets_emulator
    caplog.set_level(logging.DEBUG)
    run_dir = run_directory(tmp_path, dag_id="d", run_id="secret")
    key = RunKey(dag_id="d", task_id="submit", run_id="secret")
    async with backend_for(emu, anonymous=False, credentials=Credentials(token=TOKEN)) as backend:
        assert TOKEN not in repr(backend)
        handle = await submit_rows(backend, rows(6), run_dir, key)
        await wait_all(backend, handle, emu)
        await collect_run(backend, handle, run_dir)
        staged = b"".join([line async for line in backend._gcs.lines(handle.batches[0].input_file_id)])
    assert_accounted(run_dir, 6)
    assert TOKEN.encode() not in staged
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text
    jobs = httpx.get(jobs_url(emu), headers={"authorization": "Bearer other"}).text
    assert TOKEN not in jobs and handle.batch_ids[0] in jobs


def test_an_unreadable_key_fails_without_echoing_it(secrets_emulator: EmulatorProcess) -> None:
    secret = "-----BEGIN PRIVATE KEY-----canary-----END PRIVATE KEY-----"
    bad = json.dumps({"type": "service_account", "private_key": secret, "client_email": "x@y"})
    with pytest.raises(ValueError) as caught:  # from google-auth, which cannot parse the key
        backend_for(secrets_emulator, anonymous=False, service_account_json=bad)
    assert "canary" not in str(caught.value) and "canary" not in repr(caught.value)
