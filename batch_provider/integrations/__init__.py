"""Integrations with other Airflow providers. Each subpackage imports its provider only when it is
loaded, and nothing in the base install loads it, so the provider never needs them installed."""
