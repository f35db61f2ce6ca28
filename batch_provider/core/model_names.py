"""Exact model names: each provider's snapshot rules, and the names a model id may be known by.

A model id is *known* when one of its :func:`name_candidates` is an exact known name (see
:mod:`batch_provider.core.catalog`); nothing matches by prefix, so a typo such as ``gpt-4o-mnii``
is never taken for ``gpt-4o-mini``.

Invariants:
- ``name_candidates(provider, model)`` starts with the id as given (``models/`` and Bedrock
  ARN / cross-region prefixes removed) and adds the base name under each documented snapshot rule:
  OpenAI ``<name>-YYYY-MM-DD`` and ``ft:<base>:…``; Anthropic ``<name>-YYYYMMDD`` and
  ``<name>-latest``; Gemini ``<name>-001`` and ``<name>-preview-MM-YYYY``; Bedrock
  ``<vendor>.<name>[-YYYYMMDD]-vN[:M]``.
- A Bedrock ARN naming an application inference profile, provisioned or custom model carries no
  model name: :func:`opaque_model_id` says so, and such ids are not checked.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from batch_provider.core.models import Provider

BEDROCK_PROFILE = re.compile(r"^(?:us|eu|apac|us-gov|global|jp|au|ca|regional)\.(?=[a-z0-9-]+\.)")
_BEDROCK_ARN = re.compile(r"^arn:aws[a-z-]*:bedrock:[^:]*:[^:]*:([a-z-]+)/(.+)$")
_BEDROCK_NAMED_ARNS = frozenset({"foundation-model", "inference-profile", "system-defined-inference-profile"})
_BEDROCK_VERSION = re.compile(r"^(.+)-v\d+(?::\d+)?(?::\d+k)?$")
_OPENAI_DATE = re.compile(r"^(.+)-\d{4}-\d{2}-\d{2}$")
_ANTHROPIC_DATE = re.compile(r"^(.+)-\d{8}$")
_GEMINI_VERSION = re.compile(r"^(.+?)(?:-\d{3}|-latest)$")
_GEMINI_PREVIEW = re.compile(r"^(.+)-preview-\d{2}-\d{4}$")
_LATEST = re.compile(r"^(.+)-latest$")


def opaque_model_id(provider: Provider, model: str) -> bool:
    """A Bedrock ARN that names no model (application profile, provisioned or custom model), or a
    Vertex tuned model (``projects/…/models/…``)."""
    if provider is Provider.VERTEX:
        return model.startswith("projects/")
    if provider is not Provider.BEDROCK:
        return False
    arn = _BEDROCK_ARN.match(model)
    return arn is not None and arn.group(1) not in _BEDROCK_NAMED_ARNS


def _stripped(provider: Provider, model: str) -> str:
    if provider is Provider.GEMINI:
        return model.removeprefix("models/")
    if provider is Provider.VERTEX:
        return model.removeprefix("publishers/google/models/").removeprefix("models/")
    if provider is Provider.BEDROCK:
        arn = _BEDROCK_ARN.match(model)
        if arn is not None:
            model = arn.group(2)
        return BEDROCK_PROFILE.sub("", model)
    return model


def name_candidates(provider: Provider | str, model: str) -> list[str]:
    """The names ``model`` may be known by, most specific first (the id itself, then its base)."""
    provider = Provider(provider)
    name = _stripped(provider, model)
    out = [name]

    def add(pattern: re.Pattern[str], text: str) -> str:
        match = pattern.match(text)
        if match is None:
            return text
        out.append(match.group(1))
        return match.group(1)

    if provider in (Provider.OPENAI, Provider.OPENAI_COMPATIBLE):
        if name.startswith("ft:"):
            base = name[3:].split(":", 1)[0]
            out.append(base)
            add(_OPENAI_DATE, base)
        else:
            add(_OPENAI_DATE, name)
    elif provider is Provider.ANTHROPIC:
        add(_LATEST, add(_ANTHROPIC_DATE, name))
    elif provider in (Provider.GEMINI, Provider.VERTEX):
        add(_GEMINI_VERSION, add(_GEMINI_PREVIEW, name))
    elif provider is Provider.BEDROCK:
        add(_ANTHROPIC_DATE, add(_BEDROCK_VERSION, name))
    return list(dict.fromkeys(out))


def bedrock_base(name: str) -> str:
    """A Bedrock model id without cross-region prefix, version suffix and date: the catalog key."""
    return name_candidates(Provider.BEDROCK, name)[-1]


def closest(model: str, known: Iterable[str], *, count: int = 3) -> list[str]:
    """Known names that look like ``model`` (for "did you mean …")."""
    return difflib.get_close_matches(model, list(known), n=count, cutoff=0.75)
