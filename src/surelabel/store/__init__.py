"""Storage for the review service: items, review queue, reviewers, tokens (SQLite or PostgreSQL).

The names below are imported on first use (PEP 562), so that
``surelabel.store.roles`` (what the command line needs) loads without SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from surelabel.store.roles import ROLES, SCOPES

if TYPE_CHECKING:
    from surelabel.store.auth import LoginLimits, Session, TaskRole, Token, User
    from surelabel.store.base import (
        ConflictError,
        NotFoundError,
        QuotaReachedError,
        StoreError,
        normalize_url,
    )
    from surelabel.store.calibrations import CalibrationVersion
    from surelabel.store.items import ORDERS, Item, ItemFilter
    from surelabel.store.queue import Review
    from surelabel.store.repository import Store

_HOMES = {
    "ORDERS": "items",
    "CalibrationVersion": "calibrations",
    "ConflictError": "base",
    "Item": "items",
    "ItemFilter": "items",
    "LoginLimits": "auth",
    "NotFoundError": "base",
    "QuotaReachedError": "base",
    "Review": "queue",
    "Session": "auth",
    "Store": "repository",
    "StoreError": "base",
    "TaskRole": "auth",
    "Token": "auth",
    "User": "auth",
    "normalize_url": "base",
}

__all__ = [
    "ORDERS",
    "ROLES",
    "SCOPES",
    "CalibrationVersion",
    "ConflictError",
    "Item",
    "ItemFilter",
    "LoginLimits",
    "NotFoundError",
    "QuotaReachedError",
    "Review",
    "Session",
    "Store",
    "StoreError",
    "TaskRole",
    "Token",
    "User",
    "normalize_url",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
