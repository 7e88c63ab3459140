"""Who may do what: reviewer roles and API token scopes.

Plain constants that import nothing, so the command line offers them as choices without
loading SQLAlchemy (``surelabel.store`` itself imports its other parts on first use).
"""

from __future__ import annotations

ROLES: tuple[str, ...] = ("reviewer", "admin")
SCOPES: tuple[str, ...] = ("classify", "read", "review")
