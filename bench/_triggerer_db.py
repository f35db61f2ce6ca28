"""Put deferred tasks straight into a migrated Airflow metadata DB (run in the Airflow environment).

    python bench/_triggerer_db.py SPEC.json

SPEC: ``{"dags_folder": DIR, "triggers": [[classpath, kwargs], ...], "probe": [classpath, kwargs]}``.
Registers the two-task DAG written in ``dags_folder`` (as the dag-processor would), creates one
running DagRun, then inserts one Trigger row per entry and one TaskInstance per trigger in state
``deferred`` pointing at it (task ``wait``, map_index 0..N-1; the probe is task ``probe``), exactly
the rows a deferring task leaves behind. Prints ``{"wait_trigger_ids": [...]}`` in the input order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DAG_ID = "bench_triggerer"
DAG_FILE = """\
from airflow.sdk import DAG, task


@task
def probe():
    pass


@task
def wait():
    pass


with DAG("bench_triggerer", schedule=None):
    probe()
    wait()
"""


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    folder = Path(spec["dags_folder"])

    from airflow._shared.timezones import timezone
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance, uuid7
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import insert, inspect, update

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=folder, bundle_path=folder, bundle_name="dags-folder")
    if bag.import_errors:
        raise SystemExit(f"bench DAG did not import: {bag.import_errors}")
    sync_bag_to_db(bag, "dags-folder", None)

    now = timezone.utcnow()
    with create_session() as session:
        dag = SerializedDagModel.get_dag(DAG_ID, session=session)
        run = dag.create_dagrun(
            run_id="bench",
            run_after=now,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.RUNNING,
            start_date=now,
            session=session,
        )
        session.flush()
        wait_ti = next(ti for ti in run.task_instances if ti.task_id == "wait")
        template = {a.columns[0].key: getattr(wait_ti, a.key) for a in inspect(TaskInstance).column_attrs}
        entries = [spec["probe"], *spec["triggers"]]
        triggers = [Trigger(classpath=path, kwargs=kwargs, created_date=now) for path, kwargs in entries]
        session.add_all(triggers)
        session.flush()
        deferred = {
            "state": TaskInstanceState.DEFERRED,
            "try_number": 1,
            "start_date": now,
            "updated_at": now,
            "next_method": "execute_complete",
            "next_kwargs": {},
        }
        probe_ti = next(ti for ti in run.task_instances if ti.task_id == "probe")
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.id == probe_ti.id)
            .values(trigger_id=triggers[0].id, **deferred)
        )
        session.execute(TaskInstance.__table__.delete().where(TaskInstance.id == template["id"]))
        rows = []
        for index, trigger in enumerate(triggers[1:]):
            row = dict(template)
            row.update(deferred, id=uuid7(), map_index=index)
            row["trigger_id"] = trigger.id
            rows.append(row)
        for start in range(0, len(rows), 2000):
            session.execute(insert(TaskInstance.__table__), rows[start : start + 2000])
        print(json.dumps({"wait_trigger_ids": [t.id for t in triggers[1:]]}))


if __name__ == "__main__":
    main()
