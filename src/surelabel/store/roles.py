"""Who may do what: account roles, per-task roles and API token scopes.

Plain constants that import nothing, so the command line offers them as choices without
loading SQLAlchemy (``surelabel.store`` itself imports its other parts on first use).

- An account is ``admin`` (every task, and the admin pages) or not; a non-admin account
  works only on the tasks it holds a **task role** for.
- A task role is ``reviewer`` (answers items) or ``adjudicator`` (also settles items whose
  reviewers disagree). A role held for :data:`ALL_TASKS` applies to every task.
- An API token carries scopes and, optionally, one task it is limited to.
"""

from __future__ import annotations

#: Roles ``surelabel users add --role`` accepts: the two task roles, and ``admin``.
ROLES: tuple[str, ...] = ("reviewer", "adjudicator", "admin")
#: Roles held per task (``admin`` is account-wide).
TASK_ROLES: tuple[str, ...] = ("reviewer", "adjudicator")
#: A task role for this "task" applies to every task.
ALL_TASKS = "*"
SCOPES: tuple[str, ...] = ("classify", "read", "review", "adjudicate", "admin", "metrics")
