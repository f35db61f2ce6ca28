"""Local emulator of the OpenAI Batch and Anthropic Message Batches APIs (see README.md here).

``create_app(config)`` builds the ASGI app; ``running_emulator()`` runs it as a subprocess for tests.
"""

from .app import create_app
from .config import EmulatorConfig
from .process import EmulatorProcess, running_emulator

__all__ = ["EmulatorConfig", "EmulatorProcess", "create_app", "running_emulator"]
