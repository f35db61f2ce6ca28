"""Vertex face benchmark: one large batch prediction job through the emulator and its GCS.

Starts the emulator with ``--with-gcs`` as a real process, uploads ``--rows`` input lines with
gcsfs, then times: the create call (it reads the whole input from GCS into the job's copy and plans
it), the first get after the job ends (it writes every prediction line to GCS), reading the
predictions back with gcsfs, and ``--polls`` status gets of the finished job.

Usage: ``.venv/bin/python bench/vertex_emulator.py [--rows 20000] [--polls 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import httpx
from gcsfs.core import GCSFileSystem

from batch_provider.emulator.gcs import GcsAccess
from batch_provider.emulator.process import running_emulator

AUTH = {"authorization": "Bearer bench"}
JOBS = "/v1/projects/bench/locations/us-central1/batchPredictionJobs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--polls", type=int, default=200)
    args = parser.parse_args()
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        endpoint = str(emu.gcs_endpoint)
        gcs = GcsAccess(endpoint)
        for bucket in ("bench-in", "bench-out"):
            gcs.create_bucket(bucket)
        fs = GCSFileSystem(endpoint_url=endpoint, token="anon", project="bench")
        lines = (
            json.dumps(
                {
                    "request": {
                        "contents": [
                            {"role": "user", "parts": [{"text": f"Classify ticket {i}: " + "x " * 40}]}
                        ],
                        "generationConfig": {"maxOutputTokens": 64},
                        "labels": {"bp_id": f"row-{i:08d}"},
                    }
                }
            )
            for i in range(args.rows)
        )
        data = ("\n".join(lines) + "\n").encode()
        t = time.perf_counter()
        fs.pipe("bench-in/input.jsonl", data)
        upload = time.perf_counter() - t
        body = {
            "displayName": "bench",
            "model": "publishers/google/models/gemini-2.5-flash",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://bench-in/input.jsonl"]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": "gs://bench-out/o"},
            },
        }
        with httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=600) as client:
            t = time.perf_counter()
            job = client.post(JOBS, json=body).raise_for_status().json()
            create = time.perf_counter() - t
            emu.advance(10 * 86400)
            t = time.perf_counter()
            done = client.get(f"/v1/{job['name']}").raise_for_status().json()
            settle = time.perf_counter() - t
            assert done["state"] == "JOB_STATE_SUCCEEDED", done["state"]
            directory = done["outputInfo"]["gcsOutputDirectory"].removeprefix("gs://")
            t = time.perf_counter()
            out = b"".join(fs.cat(p) for p in fs.glob(directory + "/predictions*.jsonl"))
            read = time.perf_counter() - t
            assert out.count(b"\n") == args.rows
            t = time.perf_counter()
            for _ in range(args.polls):
                client.get(f"/v1/{job['name']}").raise_for_status()
            poll = (time.perf_counter() - t) / max(args.polls, 1)
    mb_in, mb_out = len(data) / 1e6, len(out) / 1e6
    print(f"rows {args.rows}: input {mb_in:.1f} MB, predictions {mb_out:.1f} MB")
    print(f"upload input (gcsfs pipe)       {upload:6.2f} s")
    print(f"create (read input from GCS)    {create:6.2f} s")
    print(f"first get (write predictions)   {settle:6.2f} s  ({mb_out / settle:.1f} MB/s)")
    print(f"read predictions (gcsfs)        {read:6.2f} s")
    print(f"get of a finished job           {poll * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
