"""Helpers shared by several test modules (not a test module itself)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_url() -> str:
    """The test PostgreSQL server's URL; skips the test without one (fails in CI)."""
    url = os.environ.get("SURELABEL_TEST_PG_URL")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("SURELABEL_TEST_PG_URL is not set in CI (scripts/ci-services.sh sets it)")
        pytest.skip("SURELABEL_TEST_PG_URL not set (run: source scripts/ci-services.sh)")
    return url


@contextmanager
def pg_schema_url(prefix: str) -> Iterator[str]:
    """The URL of a fresh, throw-away PostgreSQL schema, dropped afterwards."""
    from sqlalchemy import create_engine, text

    base = pg_url()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
