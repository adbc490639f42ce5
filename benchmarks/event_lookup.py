"""The worker's de-duplication look-up against a growing table (chDB, the real schema).

For each table size, ``slm_metrics`` is filled with that many rows of history (5 tenants,
two models, ``occurred_at`` spread over the last 20 days, generated inside ClickHouse),
then a batch of 5,000 new events (the last 2 s, not stored) is looked up the way the
worker does (``ClickHouseTelemetryStore.existing``: its tenants and span of
``occurred_at``) and, for comparison, by event id alone (what the worker did before: the
bloom-filter index lets nearly every granule through for 5,000 ids). The worker passes the ids
as one TSV string (`format(TSV, ...)`); the by-id query is the old one, a list of literals.
Median of 5 each.

Prints one JSON object. Usage: .venv/bin/python benchmarks/event_lookup.py [--rows 100000,2000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.domain._event_examples import examples  # noqa: E402

from somaagent.adapters.clickhouse import ChdbDriver  # noqa: E402
from somaagent.adapters.clickhouse_schema import Retention  # noqa: E402
from somaagent.adapters.telemetry_store import ClickHouseTelemetryStore  # noqa: E402
from somaagent.domain.events import Event, format_timestamp, new_event_id  # noqa: E402
from somaagent.service.ingest import Lookup  # noqa: E402

BATCH = 5000


def _fill(store: ClickHouseTelemetryStore, rows: int) -> float:
    span_ms = 20 * 24 * 3600 * 1000
    started = time.perf_counter()
    store.driver.command(
        f"INSERT INTO {store.table('slm.metrics')} (event_id, tenant, model_id, occurred_at,"
        " session_id, _topic_id, _partition, _offset, _batch_end)"
        " SELECT generateUUIDv7(), concat('t', toString(number % 5)),"
        " if(number % 2 = 0, 'smollm2', 'qwen'),"
        f" now64(6) - toIntervalMillisecond(intDiv(number * {span_ms}, {rows})),"
        f" 's', 'history', 0, number, number FROM numbers({rows})"
    )
    return time.perf_counter() - started


def _batch() -> list[Event]:
    base = next(e for e in examples() if e.event_type == "slm.metrics")
    now = datetime.now(UTC)
    return [
        msgspec.structs.replace(
            base,
            event_id=new_event_id(),
            tenant=f"t{i % 5}",
            occurred_at=format_timestamp(now - timedelta(milliseconds=2000 * i // BATCH)),
        )
        for i in range(BATCH)
    ]


def _median_ms(run: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def measure(rows: int) -> dict[str, float | int]:
    path = Path(tempfile.mkdtemp(prefix="soma-lookup-"))
    driver = ChdbDriver(path)
    try:
        store = ClickHouseTelemetryStore(
            driver, database="soma", retention=Retention(3650, 7, 3650)
        )
        store.ensure_schema()
        fill_s = _fill(store, rows)
        batch = _batch()
        table = store.table("slm.metrics")
        lookup = Lookup.of(batch)
        ids = ", ".join(f"'{e.event_id}'" for e in batch)
        by_id = (  # the worker's query before the window: the same columns, ids alone
            f"SELECT toString(event_id) AS id, _topic_id, _partition, _offset FROM {table}"
            f" WHERE event_id IN ({ids})"
        )
        assert store.existing(table, lookup) == {}
        return {
            "rows": rows,
            "fill_s": round(fill_s, 2),
            "bounded_ms": _median_ms(lambda: store.existing(table, lookup)),
            "by_id_only_ms": _median_ms(lambda: driver.query_json(by_id)),
        }
    finally:
        driver.close()
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="100000,2000000,10000000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    print(
        json.dumps(
            {"benchmark": "event_lookup", "batch": BATCH, "sizes": [measure(n) for n in sizes]}
        )
    )


if __name__ == "__main__":
    main()
