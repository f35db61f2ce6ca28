"""Hooks: build a provider backend from an Airflow connection."""
