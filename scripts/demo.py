"""Run the nightly ticket enrichment DAG end to end on SQLite against the embedded emulator.

Starts the emulator in the background, prepares a throwaway Airflow home (SQLite), runs
``airflow dags test nightly_ticket_enrichment`` for one day of the sample tickets, prints the run
summary and where the result files are, and stops the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "nightly_ticket_enrichment"
LOGICAL_DATE = "2026-11-20"


def main() -> int:
    sys.path.insert(0, str(REPO))
    from batch_provider.emulator.process import running_emulator

    home = Path(tempfile.mkdtemp(prefix="batch-provider-demo-"))
    out = REPO / "out"
    with running_emulator(time_factor=3600.0) as emulator:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": "demo-only-" + "0" * 60,
            "BATCH_PROVIDER_RUN_PATH": f"file://{out}",
            "AIRFLOW_CONN_LLM_OPENAI_DEFAULT": json.dumps(
                {"conn_type": "llm_openai", "host": f"{emulator.base_url}/v1", "password": "emulator-key"}
            ),
            "AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT": json.dumps(
                {"conn_type": "llm_anthropic", "host": emulator.base_url, "password": "emulator-key"}
            ),
        }
        airflow = str(Path(sys.executable).with_name("airflow"))
        print(f"Emulator on {emulator.base_url}; Airflow home {home} (SQLite)", flush=True)
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([airflow, "dags", "test", DAG_ID, LOGICAL_DATE], env=env, check=True)
        stats = emulator.stats()
    manifests = sorted(out.glob(f"{DAG_ID}/**/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        print("No manifest was written: the run did not reach its collect task.", file=sys.stderr)
        return 1
    manifest = json.loads(manifests[-1].read_text())
    print("\n== Run summary ==")
    for key in ("inputs", "rejected", "succeeded", "unresolved", "dead_letter", "accounted"):
        print(f"  {key:12} {manifest.get(key)}")
    usage = manifest.get("usage", {})
    print(f"  {'tokens':12} {usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out")
    if "cost" in manifest:
        print(f"  {'cost':12} {json.dumps(manifest['cost'])}")
    print(f"  {'batches':12} {sum(stats.get('batches_created', {}).values())} created in the emulator")
    print("\n== Result files ==")
    for name, path in manifest.get("files", {}).items():
        print(f"  {name:12} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
