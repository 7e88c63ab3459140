"""Backends turn prompts into token log-probabilities. See :mod:`surelabel.backends.base`."""

from __future__ import annotations

from typing import Any

from surelabel.backends.base import Backend, Capabilities, Generation, ScoreResult, TokenLogprob
from surelabel.errors import UserError

BACKENDS = ("llamacpp", "openai")


def make_backend(name: str = "llamacpp", **options: Any) -> Backend:
    """Build a backend by name. Imports lazily: no model load or network at import time."""
    if name == "llamacpp":
        from surelabel.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(options.pop("model", None), **options)
    if name == "openai":
        from surelabel.backends.openai import OpenAIBackend

        return OpenAIBackend(options.pop("model", None), **options)
    raise UserError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "Capabilities",
    "Generation",
    "ScoreResult",
    "TokenLogprob",
    "make_backend",
]
