"""The telemetry store's event look-up, in the real ClickHouse engine (chDB).

The look-up that de-duplicates replayed events searches only the looked-for tenants and
span of ``occurred_at``: it finds what is stored there, to the microsecond, and nothing
outside it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta

import msgspec
import pytest

from somaagent.adapters.clickhouse import ChdbDriver
from somaagent.adapters.clickhouse_schema import Retention
from somaagent.adapters.telemetry_store import ClickHouseTelemetryStore
from somaagent.domain.events import Codec, Event, new_event_id
from somaagent.service.ingest import Lookup, StoredCoordinates, json_row
from tests.conftest import TEST_STATE_ROOT
from tests.unit.domain._event_examples import examples


@pytest.fixture()
def store() -> Iterator[ClickHouseTelemetryStore]:
    path = TEST_STATE_ROOT / f"ch-lookup-{uuid.uuid4().hex[:6]}"
    driver = ChdbDriver(path)
    store = ClickHouseTelemetryStore(driver, database="soma", retention=Retention(3650, 7, 3650))
    store.ensure_schema()
    try:
        yield store
    finally:
        driver.close()
        shutil.rmtree(path, ignore_errors=True)


def _event(tenant: str, at: str) -> Event:
    base = next(e for e in examples() if e.event_type == "slm.metrics")
    return msgspec.structs.replace(base, event_id=new_event_id(), tenant=tenant, occurred_at=at)


def test_the_lookup_finds_stored_events_within_its_tenants_and_span(
    store: ClickHouseTelemetryStore,
) -> None:
    codec = Codec()
    first = _event("acme", "2026-12-04T10:00:00.000001Z")
    second = _event("globex", "2026-12-04T10:00:05.5Z")
    older = _event("acme", "2026-11-28T09:00:00Z")  # another month, another partition
    table = store.table("slm.metrics")
    rows = b"\n".join(
        json_row(
            codec.encode(e),
            {"_topic": "t", "_topic_id": "tid", "_partition": 1, "_offset": i, "_batch_end": 2},
        )
        for i, e in enumerate([first, second, older])
    )
    store.insert(table, rows, token="tid:1:0-2")

    found = store.existing(table, Lookup.of([first, second, older]))
    assert found == {
        first.event_id: StoredCoordinates("tid", 1, 0),
        second.event_id: StoredCoordinates("tid", 1, 1),
        older.event_id: StoredCoordinates("tid", 1, 2),
    }
    assert store.existing(table, Lookup.of([second])) == {
        second.event_id: StoredCoordinates("tid", 1, 1)
    }

    at = Lookup.of([first]).earliest
    exactly = Lookup([first.event_id], ["acme"], at, at)
    assert set(store.existing(table, exactly)) == {first.event_id}  # inclusive, to the µs
    later = Lookup([first.event_id], ["acme"], at + timedelta(microseconds=1), at + timedelta(1))
    assert store.existing(table, later) == {}
    other_tenant = Lookup([first.event_id], ["globex"], at, at)
    assert store.existing(table, other_tenant) == {}
    unknown = _event("acme", "2026-12-04T10:00:00.000001Z")
    assert store.existing(table, Lookup.of([unknown])) == {}
