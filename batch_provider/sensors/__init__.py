"""Sensors: wait for a run's batches to end."""

from batch_provider.sensors.batch import BatchSensor

__all__ = ["BatchSensor"]
