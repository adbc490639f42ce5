"""Fixtures shared by the integration tests (the stack itself is ``tests/conftest.py``'s)."""

from __future__ import annotations

import pytest

from somaagent.adapters import postgres
from somaagent.settings import Settings


@pytest.fixture(scope="module")
def dsn(stack: Settings) -> str:
    """The test stack's PostgreSQL DSN, every migration applied."""
    dsn = stack.secret("postgres_dsn")
    postgres.migrate(dsn)
    return dsn
