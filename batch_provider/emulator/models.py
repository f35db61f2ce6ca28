"""Which model ids the emulator serves: like the real services, it refuses the others.

``EmulatorConfig.known_models`` (``--known-models``, ``POST /_emu/models``) is a list of entries:
``catalog`` (every model :mod:`batch_provider.core.catalog` knows: the bundled genai-prices data,
the package's price table and its snapshot rules), ``*`` (any id), or an exact model id.

How each face refuses an unknown model (see provider-apis.md):
- OpenAI: the batch fails validation with a ``model_not_found`` line error;
- Anthropic: the request's result is ``errored`` with ``not_found_error`` ``model: <id>``;
- Gemini: the create call gets ``404 NOT_FOUND``;
- Bedrock: the create call gets ``400 ValidationException``.
"""

from __future__ import annotations

from batch_provider.core.catalog import is_known_model
from batch_provider.core.models import Provider

from .config import EmulatorConfig

CATALOG = "catalog"
ANY = "*"


def serves(cfg: EmulatorConfig, provider: str, model: object) -> bool:
    """Whether the emulated ``provider`` answers requests for ``model``."""
    if not isinstance(model, str) or not model:
        return True  # a missing model is the request's own error, reported elsewhere
    entries = cfg.known_models
    if ANY in entries or model in entries:
        return True
    return CATALOG in entries and is_known_model(Provider(provider), model)


def openai_message(model: str) -> str:
    return f"The model `{model}` does not exist or you do not have access to it."


def gemini_message(model: str) -> str:
    name = model if model.startswith("models/") else f"models/{model}"
    return (
        f"{name} is not found for API version v1beta, or is not supported for batchGenerateContent. "
        "Call ListModels to see the list of available models and their supported methods."
    )


BEDROCK_MESSAGE = "The provided model identifier is invalid."
