"""A provider that rejects the key and echoes it back in its error message (as some
OpenAI-compatible servers and proxies do): the key must not reach the exception, the task log,
the trigger event, the trigger kwargs or the run folder, and a rejected key is not retried."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from rel_support import MODELS


class EchoKeyRejecter(BaseHTTPRequestHandler):
    calls: list[str] = []

    def _reject(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        elif self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        key = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
        type(self).calls.append(f"{self.command} {self.path}")
        body = json.dumps(
            {
                "type": "error",
                "error": {
                    "message": f"Incorrect API key provided: {key}. Check the key.",
                    "type": "authentication_error",
                    "code": "invalid_api_key",
                },
            }
        ).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reject

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def rejecter():
    EchoKeyRejecter.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoKeyRejecter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_rejected_key_is_not_echoed_anywhere(
    provider: str, rejecter: str, tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    from batch_provider.operators import SubmitBatchOperator
    from batch_provider.triggers.batch import BatchWaitTrigger

    canary = "sk-canary-" + secrets.token_hex(16)
    host = f"{rejecter}/v1" if provider == "openai" else rejecter
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_ECHO",
        json.dumps({"conn_type": f"llm_{provider}", "host": host, "password": canary}),
    )
    caplog.set_level(logging.DEBUG)
    op = SubmitBatchOperator(
        task_id="submit",
        provider=provider,
        conn_id="rel_echo",
        records=[{"id": "a-1", "text": "one"}, {"id": "a-2", "text": "two"}],
        prompt_template="Say {{ text }}",
        model=MODELS[provider],
        max_tokens=8,
        run_path=str(tmp_path / "runs"),
    )
    context = {
        "ti": mock.MagicMock(dag_id="secrets", task_id="submit", map_index=-1),
        "run_id": "r1",
        "params": {},
    }
    with pytest.raises(Exception) as caught:
        op.execute(context)
    names = [cls.__name__ for cls in type(caught.value).__mro__]
    assert "AuthenticationError" in names, repr(caught.value)
    shown = "".join(traceback.format_exception(caught.value))
    assert "401" in str(caught.value)
    assert len(EchoKeyRejecter.calls) == 1, f"a rejected key was retried: {EchoKeyRejecter.calls}"

    trigger = BatchWaitTrigger(
        conn_id="rel_echo", provider=provider, batch_ids=["batch_x"], poll_interval_min=0.1
    )
    event = asyncio.run(asyncio.wait_for(anext(trigger.run()), 60))
    assert event.payload["status"] == "error"

    leaks = []
    if canary in shown:
        leaks.append("exception")
    if canary in caplog.text:
        leaks.append("log")
    if canary in json.dumps(event.payload):
        leaks.append("trigger event")
    if canary in json.dumps(trigger.serialize()[1]):
        leaks.append("trigger kwargs")
    leaks += [
        str(p) for p in (tmp_path / "runs").rglob("*") if p.is_file() and canary.encode() in p.read_bytes()
    ]
    assert not leaks, f"the key leaked into {leaks}"
    # the message still says what is wrong and where
    assert "Incorrect API key provided" in str(caught.value) or "401" in str(caught.value)
