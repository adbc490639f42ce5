"""chDB inserts of real event rows: inline in the statement, or read from a file.

The real schema (``slm_metrics`` with its hourly view); each round inserts a batch of
``--rows`` encoded ``slm.metrics`` events (1.3 KB each, with the worker's coordinate
columns) both ways, each under a fresh de-duplication token: ``inline`` is
``INSERT ... FORMAT JSONEachRow`` followed by the rows, ``file`` is what ``ChdbDriver``
does (the rows written to a file, ``INSERT ... FROM INFILE``). Then the table must hold
every row once and the view must have counted each. Medians over the rounds.

Prints one JSON object. Usage: .venv/bin/python benchmarks/chdb_insert.py [--rows 6000 --rounds 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.telemetry_support import fresh  # noqa: E402
from tests.unit.domain._event_examples import examples  # noqa: E402

from somaagent.adapters.clickhouse import ChdbDriver, _settings_clause  # noqa: E402
from somaagent.adapters.clickhouse_schema import Retention  # noqa: E402
from somaagent.adapters.telemetry_store import _INSERT_SETTINGS, ClickHouseTelemetryStore  # noqa: E402
from somaagent.domain.events import Codec  # noqa: E402
from somaagent.service.ingest import json_row  # noqa: E402


def _rows(codec: Codec, n: int) -> bytes:
    base = next(e for e in examples() if e.event_type == "slm.metrics")
    events = [fresh(base, f"s{i % 500}", tenant=f"t{i % 5}") for i in range(n)]
    coordinates = {"_topic": "bench", "_topic_id": "bench", "_partition": 0, "_batch_end": n}
    return b"\n".join(
        json_row(codec.encode(e), {**coordinates, "_offset": i}) for i, e in enumerate(events)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="soma-insert-"))
    driver = ChdbDriver(path)
    codec = Codec()
    try:
        store = ClickHouseTelemetryStore(
            driver, database="soma", retention=Retention(3650, 7, 3650)
        )
        store.ensure_schema()
        table = store.table("slm.metrics")
        times: dict[str, list[float]] = {"inline": [], "file": []}
        for _ in range(args.rounds):
            settings = {**_INSERT_SETTINGS, "insert_deduplication_token": uuid.uuid4().hex}
            rows = _rows(codec, args.rows)
            started = time.perf_counter()
            driver.command(
                f"INSERT INTO {table}{_settings_clause(settings)} FORMAT JSONEachRow\n"
                + rows.decode()
            )
            times["inline"].append(time.perf_counter() - started)
            rows = _rows(codec, args.rows)
            started = time.perf_counter()
            store.insert(table, rows, token=uuid.uuid4().hex)
            times["file"].append(time.perf_counter() - started)
        stored = driver.query_json(
            f"SELECT count() AS n, uniqExact(event_id) AS u FROM {table}"
            " SETTINGS output_format_json_quote_64bit_integers=0"
        )[0]
        counted = driver.query_json(
            "SELECT sum(calls) AS c FROM soma.usage_hourly"
            " SETTINGS output_format_json_quote_64bit_integers=0"
        )[0]["c"]
        expected = 2 * args.rounds * args.rows
        per_row = {k: round(statistics.median(v) / args.rows * 1e6, 1) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "benchmark": "chdb_insert",
                    "rows_per_insert": args.rows,
                    "rounds": args.rounds,
                    "us_per_row_inline": per_row["inline"],
                    "us_per_row_file": per_row["file"],
                    "all_rows_once": stored["n"] == stored["u"] == expected,
                    "view_counted_all": counted == expected,
                }
            )
        )
    finally:
        driver.close()
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
