"""The Vertex AI batch prediction face: ``batchPredictionJobs`` of the aiplatform v1 REST surface,
reading its input from and writing its predictions to GCS (:mod:`..gcs`)."""
