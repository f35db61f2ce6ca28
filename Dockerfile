# The Airflow image with this provider installed. Built by docker-compose.yaml (`docker compose build`).
# PYTHON_VERSION picks the image's Python (3.11, 3.12, 3.13 or 3.14):
#   docker compose build --build-arg PYTHON_VERSION=3.12
ARG PYTHON_VERSION=3.11
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python${PYTHON_VERSION}
FROM ${AIRFLOW_IMAGE}

# Install as the airflow user and pin apache-airflow to the image's version, as the image's docs
# ask: `pip install` must never up- or downgrade Airflow itself.
COPY --chown=airflow:root pyproject.toml README.md /opt/provider/
COPY --chown=airflow:root batch_provider /opt/provider/batch_provider
# Mount points of the compose file's named volumes, owned by airflow so the volumes are too.
RUN mkdir -p /opt/airflow/auth /opt/airflow/emulator-data
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/provider \
    && python -c "import batch_provider, airflow.providers.celery, s3fs; print('provider installed')"
