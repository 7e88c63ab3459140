"""Backends turn prompts into token log-probabilities.

See :mod:`surelabel.backends.base` for the interface and :mod:`surelabel.backends.registry`
for finding one by name (entry-point group ``surelabel.backends``) and for backend specs.
"""

from __future__ import annotations

from typing import Any

from surelabel.backends.base import (
    Backend,
    BaseBackend,
    Capabilities,
    Generation,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
)
from surelabel.backends.registry import (
    BackendSpec,
    available_backends,
    backend_factory,
    build_backend,
    register,
    unregister,
)


def make_backend(name: str = "llamacpp", **options: Any) -> Backend:
    """Build a backend by name. Imports lazily: no model load or network at import time."""
    return build_backend(BackendSpec(name, options))


__all__ = [
    "Backend",
    "BackendSpec",
    "BaseBackend",
    "Capabilities",
    "Generation",
    "ScoreRequest",
    "ScoreResult",
    "TokenLogprob",
    "available_backends",
    "backend_factory",
    "build_backend",
    "make_backend",
    "register",
    "unregister",
]
