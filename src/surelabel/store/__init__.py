"""Storage for the review service: items, review queue, reviewers, tokens (SQLite or PostgreSQL)."""

from surelabel.store.repository import (
    ORDERS,
    ROLES,
    SCOPES,
    ConflictError,
    Item,
    NotFoundError,
    Session,
    Store,
    StoreError,
    Token,
    User,
    normalize_url,
)

__all__ = [
    "ORDERS",
    "ROLES",
    "SCOPES",
    "ConflictError",
    "Item",
    "NotFoundError",
    "Session",
    "Store",
    "StoreError",
    "Token",
    "User",
    "normalize_url",
]
