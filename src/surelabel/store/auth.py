"""Who may use the service: reviewers and their web sessions, and API tokens.

Secrets are stored hashed (:mod:`surelabel.store.security`); a password, cookie or token
is shown once, when it is made.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from surelabel.errors import UserError
from surelabel.store import security
from surelabel.store.base import NotFoundError, StorePart
from surelabel.store.roles import ROLES, SCOPES
from surelabel.store.schema import sessions, tokens, users


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_at: float


@dataclass(frozen=True)
class Token:
    name: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires_at: float


@functools.cache
def _dummy_hash() -> str:
    """A real hash to check unknown user names against (made on first use: scrypt is slow)."""
    return security.hash_password("not a password")


class Accounts(StorePart):
    """Users, passwords, web sessions and API tokens."""

    # -- users and sessions -----------------------------------------------------------

    def add_user(self, name: str, role: str = "reviewer", password: str | None = None) -> str:
        """Create a user; returns the password (a new random one unless given)."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not name.strip():
            raise UserError("user name must not be empty")
        password = password or security.new_password()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    users.insert().values(
                        name=name,
                        role=role,
                        password_hash=security.hash_password(password),
                        created_at=self.clock(),
                    )
                )
        except IntegrityError as exc:
            raise UserError(f"user {name!r} already exists") from exc
        return password

    def set_password(self, name: str, password: str | None = None) -> str:
        password = password or security.new_password()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(users)
                .where(users.c.name == name)
                .values(password_hash=security.hash_password(password))
            )
        if result.rowcount != 1:
            raise NotFoundError(f"no user {name!r}")
        return password

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.name)).all()
        return [User(r.name, r.role, r.created_at) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            # Spend the same time as a real check, so timing does not reveal user names.
            security.verify_password(password, _dummy_hash())
            return None
        if not security.verify_password(password, row.password_hash):
            return None
        return User(row.name, row.role, row.created_at)

    def create_session(self, user: User, *, ttl: float = 12 * 3600) -> tuple[str, Session]:
        """A new web session; returns the cookie value (shown once) and the session."""
        cookie = security.new_token("")
        csrf = security.new_token("")
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(sessions.delete().where(sessions.c.expires_at <= now))
            conn.execute(
                sessions.insert().values(
                    token_hash=security.token_hash(cookie),
                    user_name=user.name,
                    csrf=csrf,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
        return cookie, Session(user, csrf, now + ttl)

    def get_session(self, cookie: str) -> Session | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sessions, users.c.role, users.c.created_at.label("user_created"))
                .join(users, users.c.name == sessions.c.user_name)
                .where(
                    sessions.c.token_hash == security.token_hash(cookie),
                    sessions.c.expires_at > self.clock(),
                )
            ).first()
        if row is None:
            return None
        return Session(User(row.user_name, row.role, row.user_created), row.csrf, row.expires_at)

    def delete_session(self, cookie: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sessions.delete().where(sessions.c.token_hash == security.token_hash(cookie))
            )

    # -- API tokens -------------------------------------------------------------------

    def create_token(self, name: str, scopes: Sequence[str] = ("classify", "read")) -> str:
        """A new API token (returned once; only its hash is stored)."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise UserError(
                f"unknown scope {', '.join(bad) or '(none)'}; expected some of {', '.join(SCOPES)}"
            )
        token = security.new_token()
        with self.engine.begin() as conn:
            conn.execute(
                tokens.insert().values(
                    name=name,
                    token_hash=security.token_hash(token),
                    scopes=" ".join(dict.fromkeys(scopes)),
                    created_at=self.clock(),
                )
            )
        return token

    def check_token(self, token: str) -> Token | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tokens).where(
                    tokens.c.token_hash == security.token_hash(token),
                    tokens.c.revoked_at.is_(None),
                )
            ).first()
        return None if row is None else Token(row.name, tuple(row.scopes.split()), row.created_at)

    def revoke_tokens(self, name: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(tokens)
                .where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
        return int(result.rowcount)

    def list_tokens(self) -> list[Token]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.id)).all()
        return [
            Token(r.name, tuple(r.scopes.split()), r.created_at, r.revoked_at) for r in rows
        ]
