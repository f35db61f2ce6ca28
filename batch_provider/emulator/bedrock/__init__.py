"""The emulator's Bedrock face: state (models), routes (HTTP), outputs, and Bedrock Runtime's
``InvokeModel`` and ``Converse`` (:mod:`.sync`). Importing it joins
:mod:`batch_provider.emulator.providers`."""

from .. import providers
from .routes import ROUTES
from .state import attach
from .sync import ROUTES as SYNC_ROUTES

providers.join("bedrock", attach, [*ROUTES, *SYNC_ROUTES])
