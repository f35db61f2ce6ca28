#!/usr/bin/env bash
# One-off set-up run by the airflow-init service (as root) before the other Airflow services start:
# volume permissions, the metadata DB schema, the UI user's password, the run-folder bucket.
set -euo pipefail

AIRFLOW_UID="${AIRFLOW_UID:-50000}"
mkdir -p /opt/airflow/logs /opt/airflow/auth
chown -R "${AIRFLOW_UID}:0" /opt/airflow/logs /opt/airflow/auth

echo "Migrating the metadata DB"
airflow db migrate

# Simple auth manager: users and roles come from [core] simple_auth_manager_users, passwords from
# this file (read by the api-server).
python - <<'PY'
import json, os
user = os.environ.get("_AIRFLOW_WWW_USER_USERNAME", "airflow")
password = os.environ.get("_AIRFLOW_WWW_USER_PASSWORD", "airflow")
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path, "w") as fh:
    json.dump({user: password}, fh)
print(f"UI user {user!r} written to {path}")
PY
chown "${AIRFLOW_UID}:0" "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE}"

python /opt/airflow/deploy/create_bucket.py
echo "airflow-init done"
