"""What talks to a running distributed stack: its metadata DB, REST API, emulator and S3 run folders.

:class:`StackClients` is a base of ``DistributedStack`` (``_distributed_stack.py``); the fail-over
scenario and ``tests/deployment`` trigger runs and read their state through it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

ADMIN_USER = "admin"
RUN_BUCKET = "bp-runs"


def pg_connect(dsn: str, autocommit: bool = True) -> Any:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    return conn


class StackClients:
    """Needs ``api_url``, ``password``, ``db_dsn``, ``emulator_url``, ``s3_url`` and ``wait_for``
    from the stack it is a base of."""

    api_url: str
    password: str
    db_dsn: str
    emulator_url: str
    s3_url: str
    wait_for: Callable[..., Any]

    _client: httpx.Client | None = None
    _token: str | None = None
    _token_at = 0.0

    def close_clients(self) -> None:
        if self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------ metadata DB

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(pg_connect(self.db_dsn)) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def trigger_assignment(self) -> dict[int, int | None]:
        """``{trigger id: triggerer job id}`` of the triggers in the metadata DB."""
        return dict(self.sql("select id, triggerer_id from trigger"))

    def triggers_of_tasks(self) -> dict[str, int]:
        """``{"dag_id/run_id/task_id": trigger id}`` of the deferred task instances."""
        rows = self.sql(
            "select dag_id, run_id, task_id, trigger_id from task_instance where trigger_id is not null"
        )
        return {f"{d}/{r}/{t}": tid for d, r, t, tid in rows}

    # ------------------------------------------------------------------ REST API

    def token(self) -> str:
        if self._token is None or time.monotonic() - self._token_at > 600:
            resp = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": ADMIN_USER, "password": self.password},
                timeout=30,
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
            self._token_at = time.monotonic()
        return self._token

    def api(self, method: str, path: str, **kw: Any) -> Any:
        if self._client is None:
            self._client = httpx.Client(base_url=f"{self.api_url}/api/v2", timeout=60)
        resp = self._client.request(method, path, headers={"Authorization": f"Bearer {self.token()}"}, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:1000]}")
        return resp.json() if resp.content else None

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict | None = None) -> str:
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def wait_runs(self, runs: dict[str, str], timeout: float = 300) -> dict[str, str]:
        """Wait until every ``{run_id: dag_id}`` run has finished; returns their states."""
        final: dict[str, str] = {}

        def done() -> bool:
            for run_id, dag_id in runs.items():
                if run_id not in final:
                    state = self.run_state(dag_id, run_id)
                    if state in ("success", "failed"):
                        final[run_id] = state
            return len(final) == len(runs)

        self.wait_for(done, timeout, f"runs still going: {set(runs) - set(final)}", interval=2)
        return final

    # ------------------------------------------------------------------ emulator and S3

    def emulator_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.emulator_url}/_emu/stats", timeout=10).json()

    def batch_status(self, provider: str, batch_id: str) -> str:
        headers = {"Authorization": "Bearer sk-emulator", "anthropic-version": "2023-06-01"}
        if provider == "anthropic":
            url = f"{self.emulator_url}/v1/messages/batches/{batch_id}"
            return httpx.get(url, headers=headers, timeout=10).json()["processing_status"]
        return httpx.get(f"{self.emulator_url}/v1/batches/{batch_id}", headers=headers, timeout=10).json()[
            "status"
        ]

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def s3_json(self, key: str) -> Any:
        return json.loads(self.s3_client().get_object(Bucket=RUN_BUCKET, Key=key)["Body"].read())

    def _s3_json_named(self, name: str) -> dict[str, Any]:
        """Every ``<name>`` object in the run bucket, parsed: ``{key: content}``."""
        s3 = self.s3_client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=RUN_BUCKET):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(f"/{name}"):
                    out[obj["Key"]] = self.s3_json(obj["Key"])
        return out

    def ledgers(self) -> dict[str, dict]:
        """Every ``ledger.json`` under the run path: ``{key: ledger}``."""
        return self._s3_json_named("ledger.json")

    def manifests(self) -> dict[str, dict]:
        """Every ``manifest.json`` under the run path: ``{key: manifest}``."""
        return self._s3_json_named("manifest.json")
