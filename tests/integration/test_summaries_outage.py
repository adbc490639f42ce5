"""PostgreSQL outage: the worker keeps its batch, and storing it again doubles nothing.

The worker inserts a batch into ClickHouse before it folds the batch into PostgreSQL's
session summaries. With PostgreSQL down, the insert succeeds and the summaries fail, so the
batch is retried while new events keep arriving. The retry must be the same batch (the same
offsets, so the same de-duplication token), not the batch grown by the newer events.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import private_stack
from tests.integration.telemetry_support import (
    publish_slm,
    running_worker,
    slm_events,
    stored_slm,
    wait_until,
)


@pytest.fixture()
def database() -> Iterator[Supervisor]:
    with private_stack("outage-summaries", 27200, ["postgres"]) as supervisor:
        yield supervisor


def _calls(dsn: str, session: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT calls FROM session_summaries WHERE session_id = %s", (session,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_batch_retried_after_a_postgres_outage_is_stored_once(
    stack: Settings, database: Supervisor
) -> None:
    session = f"pg-outage-{uuid.uuid4().hex[:8]}"
    pg_port = str(database.settings.postgres_port)
    with running_worker(stack, SOMA_POSTGRES_PORT=pg_port) as container:
        assert container.worker is not None
        dsn = container.settings.secret("postgres_dsn")
        publish_slm(container, slm_events(session, 20))
        assert wait_until(lambda: stored_slm(container) == (20, 20), timeout_s=60)
        assert wait_until(lambda: _calls(dsn, session) == 20, timeout_s=30)

        database.down(only=["postgres"])
        publish_slm(container, slm_events(session, 30))
        # Inserted into ClickHouse, then refused by PostgreSQL: not committed.
        assert wait_until(lambda: stored_slm(container) == (50, 50), timeout_s=60)
        assert wait_until(
            lambda: container.worker is not None and container.worker.stats.failures > 0
        )
        publish_slm(container, slm_events(session, 40))  # arrives while the batch is retried
        time.sleep(2.5)  # at least one more retry, with the newer events buffered

        database.up(only=["postgres"])
        assert wait_until(lambda: _calls(dsn, session) == 90, timeout_s=90), _calls(dsn, session)
        assert wait_until(lambda: stored_slm(container) == (90, 90), timeout_s=30), stored_slm(
            container
        )
        time.sleep(2)  # nothing late, nothing doubled
        assert stored_slm(container) == (90, 90)
        assert _calls(dsn, session) == 90
