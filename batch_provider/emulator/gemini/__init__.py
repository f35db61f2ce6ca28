"""The emulator's Gemini face: state (models), routes (HTTP), outputs. Importing it joins
:mod:`batch_provider.emulator.providers`."""

from .. import providers
from .routes import ROUTES
from .state import attach

providers.join("gemini", attach, ROUTES)
