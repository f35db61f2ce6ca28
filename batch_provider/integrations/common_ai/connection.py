"""How a common-ai batch adapter reaches the Airflow connection it serves.

common-ai 1.0 builds every adapter as ``Adapter(api_key=conn.password, base_url=conn.host)``
(``dispatch.build_adapter_from_connection``): the adapter never learns the connection's id, login
or extras. That is all Gemini needs (key and base URL). Bedrock needs the whole ``aws``
connection (login, region, endpoints, assumed role, the ``bedrock_*`` extras), and the amazon
provider's ``AwsBaseHook`` reads those by connection id. So:

- **In a task** (``validate_requests``, ``submit``, ``find_orphaned_batch``, and everything else
  the operator calls), the connection id is the running task's ``llm_conn_id``, read from Airflow's
  current task context.
- **Everywhere else** (common-ai's trigger, which polls and cancels with no task context), the id
  travels inside the batch id the adapter handed to common-ai: ``<conn_id>@<provider batch id>``.
  Provider batch ids (ARNs, resource names) contain no ``@``, so the last ``@`` splits them.

Either way the connection is fetched again and must have the very password and host common-ai
built the adapter from; otherwise the call fails before any provider call, so an adapter never
acts with another connection's credentials. A connection id is not a secret; the batch id carries
nothing else.
"""

from __future__ import annotations

from typing import Any

SEPARATOR = "@"


def batch_handle(conn_id: str, native_id: str) -> str:
    """The batch id given to common-ai: the connection id, ``@``, the provider's batch id."""
    return f"{conn_id}{SEPARATOR}{native_id}"


def split_handle(batch_id: str) -> tuple[str | None, str]:
    """``(connection id or None, provider batch id)`` of a batch id from :func:`batch_handle`."""
    conn_id, sep, native = batch_id.rpartition(SEPARATOR)
    return (conn_id or None, native) if sep else (None, batch_id)


def running_task_conn_id() -> str | None:
    """The ``llm_conn_id`` of the task running in this process, or None outside a task."""
    try:
        from airflow.sdk import get_current_context

        context = get_current_context()
    except Exception:  # no task context here (a trigger, a test, a script)
        return None
    conn_id = getattr(context.get("task"), "llm_conn_id", None)
    return conn_id if isinstance(conn_id, str) and conn_id else None


def fetch_connection(conn_id: str, *, api_key: str | None, base_url: str | None, verify: bool) -> Any:
    """The connection ``conn_id``; with ``verify``, only when its password and host are the ones
    common-ai built the adapter from (the message names the connection, never a value)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if verify and ((conn.password or None) != api_key or (conn.host or None) != base_url):
        raise ValueError(
            f"connection {conn_id!r} does not have the password and host of the connection this batch "
            "adapter was built from, so it is not used. Run the task with the connection that "
            "submitted the batch (its id is the part of the batch id before '@')."
        )
    return conn
