"""Apache Airflow provider for LLM Batch APIs."""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata read by Airflow's providers manager."""
    from batch_provider.provider_info import PROVIDER_INFO

    return PROVIDER_INFO
