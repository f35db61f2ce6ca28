"""Child process for the Vertex DAG crash test: runs the Vertex example DAG with ``dag.test()``
and SIGKILLs itself right after the submit task's job was created (before the ledger knows it).

Usage: ``python vertex_dag_child.py <logical date ISO>``, with the Airflow environment, the
``llm_vertex_default`` connection and the run path in the environment (the test passes its own).
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from typing import Any

from dagutil import load_dags

from batch_provider.backends.vertex import VertexBackend


def main(logical_date: datetime) -> None:
    submit = VertexBackend.submit

    async def submit_then_die(self: Any, part: Any, *, tags: Any) -> Any:
        await submit(self, part, tags=tags)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    VertexBackend.submit = submit_then_die  # type: ignore[method-assign]
    dag = load_dags("examples/document_summarisation_vertex.py").dag
    dag.get_task("summarise.retry").outlets = []
    dag.test(logical_date=logical_date, run_after=logical_date)


if __name__ == "__main__":
    main(datetime.fromisoformat(sys.argv[1]))
