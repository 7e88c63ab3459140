"""The store: one :class:`Store` over one engine, made of parts that each do one job.

Every query is built with SQLAlchemy Core (parameterized); the same code runs on SQLite
(the default, in WAL mode) and PostgreSQL. The parts:

- :mod:`~surelabel.store.items`: storing a record once per client id, finding, listing;
- :mod:`~surelabel.store.queue`: leases, answers of several reviewers, settling,
  adjudication and undo (conditional ``UPDATE`` statements);
- :mod:`~surelabel.store.stats`: throughput, model-reviewer and inter-annotator agreement;
- :mod:`~surelabel.store.calibrations`: calibration versions, the active one, rollback;
- :mod:`~surelabel.store.auth`: accounts, task roles, login throttling, sessions, tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import text

from surelabel.store.auth import Accounts
from surelabel.store.base import normalize_url, open_engine
from surelabel.store.calibrations import Calibrations
from surelabel.store.migrations import migrate
from surelabel.store.queue import ReviewQueue
from surelabel.store.stats import AgreementStats


class Store(ReviewQueue, AgreementStats, Calibrations, Accounts):
    """Database access for the review service.

    Parameters
    ----------
    url:
        SQLAlchemy URL, e.g. ``sqlite:///surelabel.db`` or
        ``postgresql://user:pw@127.0.0.1/surelabel``.
    clock:
        Returns the current time in seconds (injected so tests can expire leases).
    migrate:
        Apply pending migrations on open (default).
    """

    def __init__(
        self,
        url: str = "sqlite:///surelabel.db",
        *,
        clock: Callable[[], float] = time.time,
        migrate: bool = True,
    ) -> None:
        self.url = normalize_url(url)
        self.clock = clock
        self.engine = open_engine(self.url)
        if migrate:
            self.migrate()

    def migrate(self) -> list[str]:
        return migrate(self.engine)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
