"""The emulator's Anthropic face: state (models), routes (HTTP), outputs. Importing it joins
:mod:`batch_provider.emulator.providers`."""

from .. import providers
from .routes import ROUTES
from .state import attach
from .sync import ROUTES as SYNC_ROUTES

providers.join("anthropic", attach, [*ROUTES, *SYNC_ROUTES])
