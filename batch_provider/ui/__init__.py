"""The "LLM batches" page served by the Airflow API server."""
