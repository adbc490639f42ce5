"""Broker outage: stop the broker, keep producing, start it again — every event arrives
exactly once in ClickHouse."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

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
def broker() -> Iterator[Supervisor]:
    with private_stack("outage-pipeline", 27100, ["kafka"]) as supervisor:
        yield supervisor


def test_broker_outage_loses_nothing_and_duplicates_nothing(
    stack: Settings, broker: Supervisor
) -> None:
    session = f"outage-{uuid.uuid4().hex[:8]}"
    kafka_port = str(broker.settings.kafka_port)
    with running_worker(
        stack, SOMA_KAFKA_PORT=kafka_port, SOMA_PUBLISHER_MESSAGE_TIMEOUT_MS="2000"
    ) as container:
        assert container.publisher is not None
        publish_slm(container, slm_events(session, 1000))
        assert wait_until(lambda: stored_slm(container) == (1000, 1000), timeout_s=60)

        broker.down(only=["kafka"])
        started = time.perf_counter()
        publish_slm(container, slm_events(session, 1000))
        assert time.perf_counter() - started < 1.0  # spooled, not blocked
        assert wait_until(lambda: container.publisher is not None and container.publisher.degraded)

        broker.up(only=["kafka"])
        assert wait_until(lambda: stored_slm(container) == (2000, 2000), timeout_s=120), stored_slm(
            container
        )
        publish_slm(container, slm_events(session, 500))
        assert wait_until(lambda: stored_slm(container) == (2500, 2500), timeout_s=60)
        time.sleep(3)  # nothing late, nothing doubled
        assert stored_slm(container) == (2500, 2500)
        assert container.publisher.stats.spooled >= 1000
        # The restarted (memory-only) broker re-created the topic under a new id, and the
        # rows stored after the restart say so: their tokens cannot collide with older ones.
        assert container.worker is not None
        store = container.worker.store
        ids = store.query(
            f"SELECT uniqExact(_topic_id) AS n FROM {store.database}.slm_metrics"
            " SETTINGS output_format_json_quote_64bit_integers=0"
        )[0]["n"]
        assert ids == 2
