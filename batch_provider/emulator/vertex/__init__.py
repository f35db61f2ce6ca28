"""The Vertex AI batch prediction face: ``batchPredictionJobs`` of the aiplatform v1 REST surface,
reading its input from and writing its predictions to GCS (:mod:`..gcs`). Importing it joins
:mod:`batch_provider.emulator.providers`."""

from .. import providers
from .routes import ROUTES
from .state import attach
from .sync import ROUTES as SYNC_ROUTES

providers.join("vertex", attach, [*ROUTES, *SYNC_ROUTES])
