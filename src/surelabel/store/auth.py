"""Who may use the service: accounts, task roles, web sessions, login throttling, API tokens.

Secrets are stored hashed (:mod:`surelabel.store.security`); a password, cookie or token
is shown once, when it is made. Whatever changes what an account may do (a new password,
a role, disabling it) ends its web sessions at once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from surelabel.errors import UserError
from surelabel.store import security
from surelabel.store.base import NotFoundError, StorePart
from surelabel.store.roles import ALL_TASKS, ROLES, SCOPES, TASK_ROLES
from surelabel.store.schema import login_failures, sessions, task_roles, tokens, users

#: Shortest password a person may choose (generated ones are 16 characters).
MIN_PASSWORD = 10


@dataclass(frozen=True)
class TaskRole:
    role: str
    quota: int | None = None


@dataclass(frozen=True)
class User:
    """An account. ``role`` is ``admin`` (everything) or ``reviewer`` (what ``tasks`` allow)."""

    name: str
    role: str
    created_at: float
    must_change_password: bool = False
    disabled: bool = False
    locked_until: float | None = None
    tasks: Mapping[str, TaskRole] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def task_role(self, task: str) -> TaskRole | None:
        """The role held for ``task`` (a role for every task counts; admins adjudicate)."""
        if self.is_admin:
            return TaskRole("adjudicator")
        return self.tasks.get(task) or self.tasks.get(ALL_TASKS)

    def can_review(self, task: str) -> bool:
        return self.task_role(task) is not None

    def can_adjudicate(self, task: str) -> bool:
        role = self.task_role(task)
        return role is not None and role.role == "adjudicator"

    def quota(self, task: str) -> int | None:
        role = self.task_role(task)
        return None if role is None else role.quota


@dataclass(frozen=True)
class Token:
    name: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None
    task: str | None = None
    id: int = 0

    def allows(self, task: str) -> bool:
        """Whether this token may act on ``task`` (a token without a task: every task)."""
        return self.task is None or self.task == task


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires_at: float


@dataclass(frozen=True)
class LoginLimits:
    """Login throttling: at most ``per_account`` failures per account name and
    ``per_address`` per client address within ``window`` seconds; after ``lockout_after``
    failures in a row an account is locked for ``lockout_seconds``."""

    window: float = 300.0
    per_account: int = 5
    per_address: int = 20
    lockout_after: int = 10
    lockout_seconds: float = 900.0


@functools.cache
def _dummy_hash() -> str:
    """A real hash to check unknown user names against (made on first use: scrypt is slow)."""
    return security.hash_password("not a password")


def check_new_password(password: str, *, name: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    if name and password.lower() == name.lower():
        raise UserError("the password must not be the user name")


class Accounts(StorePart):
    """Accounts, task roles, passwords, login throttling, web sessions and API tokens."""

    # -- accounts -----------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        role: str = "reviewer",
        password: str | None = None,
        *,
        tasks: Sequence[str] | None = None,
        quota: int | None = None,
        one_time: bool | None = None,
    ) -> str:
        """Create an account; returns the password (a new random one unless given).

        ``role`` ``admin`` may do everything; ``reviewer`` or ``adjudicator`` is held for
        each of ``tasks`` (default: every task). A generated password is one-time (the
        first login must change it) unless ``one_time`` says otherwise.
        """
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not name.strip() or len(name) > 200:
            raise UserError("user name must be 1 to 200 characters")
        if quota is not None and quota < 1:
            raise UserError("quota must be at least 1")
        one_time = password is None if one_time is None else one_time
        if password is None:
            password = security.new_password()
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(users.insert().values(
                    name=name,
                    role="admin" if role == "admin" else "reviewer",
                    password_hash=security.hash_password(password),
                    created_at=now,
                    must_change_password=int(one_time),
                ))
                if role != "admin":
                    for task in tasks or [ALL_TASKS]:
                        conn.execute(task_roles.insert().values(
                            user_name=name, task=task, role=role, quota=quota, created_at=now
                        ))
        except IntegrityError as exc:
            raise UserError(f"user {name!r} already exists") from exc
        return password

    def _change_user(self, conn: Connection, name: str, **values: object) -> None:
        """Update an account and end its sessions (in the caller's transaction)."""
        if values:
            found = conn.execute(update(users).where(users.c.name == name)
                                 .values(**values)).rowcount == 1
        else:
            found = conn.execute(select(users.c.id).where(users.c.name == name)).first() \
                is not None
        if not found:
            raise NotFoundError(f"no user {name!r}")
        conn.execute(delete(sessions).where(sessions.c.user_name == name))

    def set_password(
        self, name: str, password: str | None = None, *, one_time: bool | None = None
    ) -> str:
        """A new password (random unless given; a random one is one-time); ends every
        session of the account and lifts a lockout."""
        one_time = password is None if one_time is None else one_time
        password = password or security.new_password()
        with self.engine.begin() as conn:
            self._change_user(conn, name, password_hash=security.hash_password(password),
                              must_change_password=int(one_time), failed_logins=0,
                              locked_until=None)
        return password

    def change_password(self, name: str, old: str, new: str) -> None:
        """A person's own change: the old password must be right, the new one different."""
        check_new_password(new, name=name)
        if old == new:
            raise UserError("the new password must differ from the old one")
        with self.engine.connect() as conn:
            row = conn.execute(select(users.c.password_hash).where(users.c.name == name)).first()
        if row is None or not security.verify_password(old, row.password_hash):
            raise UserError("the current password is wrong")
        self.set_password(name, new, one_time=False)

    def set_role(self, name: str, role: str) -> None:
        """Make an account an ``admin`` or a ``reviewer`` (whose tasks say what it may do)."""
        if role not in ("admin", "reviewer"):
            raise UserError("an account's role is admin or reviewer")
        with self.engine.begin() as conn:
            self._change_user(conn, name, role=role)

    def grant(self, name: str, task: str, role: str = "reviewer", *,
              quota: int | None = None) -> None:
        """Give an account a role for a task (``*``: every task), replacing the one it had."""
        if role not in TASK_ROLES:
            raise UserError(f"unknown task role {role!r}; expected one of {', '.join(TASK_ROLES)}")
        if quota is not None and quota < 1:
            raise UserError("quota must be at least 1")
        if not task.strip():
            raise UserError("task name must not be empty")
        with self.engine.begin() as conn:
            self._change_user(conn, name)
            conn.execute(delete(task_roles).where(task_roles.c.user_name == name,
                                                  task_roles.c.task == task))
            conn.execute(task_roles.insert().values(
                user_name=name, task=task, role=role, quota=quota, created_at=self.clock()
            ))

    def revoke_grant(self, name: str, task: str) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(delete(task_roles).where(task_roles.c.user_name == name,
                                                         task_roles.c.task == task))
            if gone.rowcount == 0:
                raise NotFoundError(f"user {name!r} has no role for task {task!r}")
            self._change_user(conn, name)

    def disable_user(self, name: str) -> None:
        with self.engine.begin() as conn:
            self._change_user(conn, name, disabled_at=self.clock())

    def enable_user(self, name: str) -> None:
        with self.engine.begin() as conn:
            self._change_user(conn, name, disabled_at=None)

    def unlock_user(self, name: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(update(users).where(users.c.name == name)
                                  .values(failed_logins=0, locked_until=None))
            if result.rowcount != 1:
                raise NotFoundError(f"no user {name!r}")
            conn.execute(delete(login_failures).where(login_failures.c.user_name == name))

    def _users(self, conn: Connection, name: str | None = None) -> list[User]:
        q = select(users).order_by(users.c.name)
        g = select(task_roles)
        if name is not None:
            q = q.where(users.c.name == name)
            g = g.where(task_roles.c.user_name == name)
        grants: dict[str, dict[str, TaskRole]] = {}
        for r in conn.execute(g):
            grants.setdefault(r.user_name, {})[r.task] = TaskRole(r.role, r.quota)
        return [
            User(r.name, r.role, r.created_at, bool(r.must_change_password),
                 r.disabled_at is not None, r.locked_until, grants.get(r.name, {}))
            for r in conn.execute(q)
        ]

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            return self._users(conn)

    def get_user(self, name: str) -> User:
        with self.engine.connect() as conn:
            found = self._users(conn, name)
        if not found:
            raise NotFoundError(f"no user {name!r}")
        return found[0]

    # -- logging in ---------------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> User | None:
        """The account if the password is right and the account is enabled, else None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            # Spend the same time as a real check, so timing does not reveal user names.
            security.verify_password(password, _dummy_hash())
            return None
        if not security.verify_password(password, row.password_hash) or row.disabled_at:
            return None
        return self.get_user(name)

    def login_retry_after(self, name: str, address: str, limits: LoginLimits) -> float:
        """Seconds until ``name`` may try to log in from ``address`` again (0: now).

        Checked before the password, so a throttled guess costs nothing and learns nothing.
        """
        now = self.clock()
        since = now - limits.window
        waits = [0.0]
        with self.engine.connect() as conn:
            locked = conn.execute(
                select(users.c.locked_until).where(users.c.name == name)
            ).scalar()
            if locked is not None and locked > now:
                waits.append(locked - now)
            for column, value, most in (
                (login_failures.c.user_name, name, limits.per_account),
                (login_failures.c.address, address, limits.per_address),
            ):
                times = list(conn.execute(
                    select(login_failures.c.at)
                    .where(column == value, login_failures.c.at > since)
                    .order_by(login_failures.c.at.desc())
                    .limit(most)
                ).scalars())
                if len(times) >= most:
                    # Allowed again when the oldest of the last `most` failures ages out.
                    waits.append(times[-1] + limits.window - now)
        return max(waits)

    def record_login_failure(self, name: str, address: str, limits: LoginLimits) -> bool:
        """Count a failed login; True when it locked the account just now."""
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(delete(login_failures).where(
                login_failures.c.at <= now - max(limits.window, limits.lockout_seconds)))
            conn.execute(login_failures.insert().values(
                user_name=name[:200], address=address[:100], at=now))
            conn.execute(update(users).where(users.c.name == name)
                         .values(failed_logins=users.c.failed_logins + 1))
            locked = conn.execute(
                update(users)
                .where(users.c.name == name, users.c.failed_logins >= limits.lockout_after,
                       (users.c.locked_until.is_(None)) | (users.c.locked_until <= now))
                .values(locked_until=now + limits.lockout_seconds, failed_logins=0)
            )
        return locked.rowcount == 1

    def record_login_success(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(users).where(users.c.name == name)
                         .values(failed_logins=0, locked_until=None))
            conn.execute(delete(login_failures).where(login_failures.c.user_name == name))

    # -- web sessions -------------------------------------------------------------------

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
                select(sessions.c.user_name, sessions.c.csrf, sessions.c.expires_at)
                .join(users, users.c.name == sessions.c.user_name)
                .where(
                    sessions.c.token_hash == security.token_hash(cookie),
                    sessions.c.expires_at > self.clock(),
                    users.c.disabled_at.is_(None),
                )
            ).first()
            if row is None:
                return None
            found = self._users(conn, row.user_name)
        if not found:
            return None
        return Session(found[0], row.csrf, row.expires_at)

    def delete_session(self, cookie: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sessions.delete().where(sessions.c.token_hash == security.token_hash(cookie))
            )

    def count_sessions(self, name: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(sessions).where(
                    sessions.c.user_name == name, sessions.c.expires_at > self.clock())
            ).scalar_one())

    # -- API tokens -------------------------------------------------------------------

    def create_token(
        self, name: str, scopes: Sequence[str] = ("classify", "read"), *, task: str | None = None
    ) -> str:
        """A new API token (returned once; only its hash is stored), for one task or all."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise UserError(
                f"unknown scope {', '.join(bad) or '(none)'}; expected some of {', '.join(SCOPES)}"
            )
        if not name.strip() or len(name) > 200:
            raise UserError("token name must be 1 to 200 characters")
        token = security.new_token()
        with self.engine.begin() as conn:
            conn.execute(
                tokens.insert().values(
                    name=name,
                    token_hash=security.token_hash(token),
                    scopes=" ".join(dict.fromkeys(scopes)),
                    created_at=self.clock(),
                    task=task or None,
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
        return None if row is None else _token(row)

    def revoke_tokens(self, name: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(tokens)
                .where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
        return int(result.rowcount)

    def revoke_token_id(self, token_id: int) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(tokens)
                .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
        if result.rowcount != 1:
            raise NotFoundError(f"no active token {token_id}")

    def list_tokens(self) -> list[Token]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.id)).all()
        return [_token(r) for r in rows]


def _token(r: Any) -> Token:
    return Token(r.name, tuple(r.scopes.split()), r.created_at, r.revoked_at, r.task, r.id)
