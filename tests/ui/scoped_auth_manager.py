"""Airflow's simple auth manager with per-DAG read access for one user, for the page's access tests.

The simple auth manager grants DAG access by role only. This subclass answers
``is_authorized_dag`` for the user named in ``BP_UI_SCOPED_USER`` from the allow-list in
``BP_UI_SCOPED_DAGS`` (comma-separated), as a deployment's real auth manager would per DAG. Every
other user and check is the simple auth manager's.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


class ScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if user.get_name() == os.environ.get("BP_UI_SCOPED_USER"):
            allowed = set(filter(None, os.environ.get("BP_UI_SCOPED_DAGS", "").split(",")))
            return method == "GET" and details is not None and details.id in allowed
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
