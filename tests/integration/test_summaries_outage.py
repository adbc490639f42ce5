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

import msgspec
import psycopg
import pytest

from somaagent.domain.events import Event
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
    """Calls summed over the test's sessions (``session`` and ``session-<tenant>``)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM session_summaries"
            " WHERE session_id = %s OR session_id LIKE %s",
            (session, f"{session}-%"),
        ).fetchone()
    return int(row[0]) if row else 0


def _events(session: str, n: int, tenants: int) -> list[Event]:
    """``n`` events; with several tenants, spread over partitions (one session each)."""
    if tenants == 1:
        return slm_events(session, n)
    return [
        msgspec.structs.replace(e, session_id=f"{session}-{i % tenants}", tenant=f"t-{i % tenants}")
        for i, e in enumerate(slm_events(session, n))
    ]


# With several partitions a round has several batches: the next is validated while the one
# before is written, and a failed write leaves both to be handed out again.
@pytest.mark.parametrize("tenants", [1, 5])
def test_a_batch_retried_after_a_postgres_outage_is_stored_once(
    stack: Settings, database: Supervisor, tenants: int
) -> None:
    session = f"pg-outage-{uuid.uuid4().hex[:8]}"
    pg_port = str(database.settings.postgres_port)
    with running_worker(stack, SOMA_POSTGRES_PORT=pg_port) as container:
        assert container.worker is not None
        dsn = container.settings.secret("postgres_dsn")
        publish_slm(container, _events(session, 20, tenants))
        assert wait_until(lambda: stored_slm(container) == (20, 20), timeout_s=60)
        assert wait_until(lambda: _calls(dsn, session) == 20, timeout_s=30)

        database.down(only=["postgres"])
        publish_slm(container, _events(session, 30, tenants))
        # Inserted into ClickHouse, then refused by PostgreSQL: not committed.
        # (With several partitions only the round's first batch gets this far: a round
        # stops at its first failure.)
        reached = (lambda n: n == 50) if tenants == 1 else (lambda n: 20 < n <= 50)
        assert wait_until(lambda: reached(stored_slm(container)[0]), timeout_s=60)
        assert wait_until(
            lambda: container.worker is not None and container.worker.stats.failures > 0
        )
        publish_slm(container, _events(session, 40, tenants))  # arrives while the batch is retried
        time.sleep(2.5)  # at least one more retry, with the newer events buffered

        database.up(only=["postgres"])
        assert wait_until(lambda: _calls(dsn, session) == 90, timeout_s=90), _calls(dsn, session)
        assert wait_until(lambda: stored_slm(container) == (90, 90), timeout_s=30), stored_slm(
            container
        )
        time.sleep(2)  # nothing late, nothing doubled
        assert stored_slm(container) == (90, 90)
        assert _calls(dsn, session) == 90
