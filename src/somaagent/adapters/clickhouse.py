"""ClickHouse adapter: one interface, two drivers, identical SQL.

* :class:`ChdbDriver` — the ClickHouse engine embedded in this process (chDB, LOCAL profile).
  chDB has no network port: exactly one process owns a data path.
* :class:`ServerDriver` — a ClickHouse server or cluster through ``clickhouse-connect``.

Both take the same SQL text; inserts are ``JSONEachRow`` bytes with optional settings
(used for ``insert_deduplication_token``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ChdbDriver", "ClickHouseDriver", "ClickHouseError", "ServerDriver", "open_driver"]


class ClickHouseError(RuntimeError):
    """A statement failed; the message carries ClickHouse's own reason."""


class ClickHouseDriver(Protocol):
    def command(self, sql: str) -> None: ...

    def query_json(self, sql: str) -> list[dict[str, Any]]: ...

    def insert_json_each_row(
        self, table: str, rows: bytes, settings: dict[str, Any] | None = None
    ) -> None: ...

    def close(self) -> None: ...


def _settings_clause(settings: dict[str, Any] | None) -> str:
    if not settings:
        return ""
    parts = []
    for key, value in settings.items():
        if isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"{key}='{escaped}'")
        else:
            parts.append(f"{key}={int(value) if isinstance(value, bool) else value}")
    return " SETTINGS " + ", ".join(parts)


class ChdbDriver:
    """chDB session on ``path``; calls are serialised (one session, one writer)."""

    def __init__(self, path: Path) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        factory: Any = session.Session
        self._session: Any = factory(str(path))
        self._lock = threading.Lock()
        # Inserts read their rows from this file (``FROM INFILE``): rows given inline in
        # the statement text cost chDB about 60% more per event row
        # (benchmarks/chdb_insert.py).
        self._rows_file = path.resolve() / "insert-rows.jsonl"  # chDB reads it, by this name

    def _run(self, sql: str, fmt: str = "CSV", rows: bytes | None = None) -> Any:
        """Run ``sql``; ``rows`` are written to the rows file first (under the same lock)."""
        with self._lock:
            try:
                if rows is not None:
                    self._rows_file.write_bytes(rows)
                return self._session.query(sql, fmt)
            except Exception as exc:  # chDB raises a bare RuntimeError with CH's message
                raise ClickHouseError(str(exc).strip().splitlines()[0][:2000]) from None
            finally:
                if rows is not None:
                    self._rows_file.unlink(missing_ok=True)  # the rows are in the table now

    def command(self, sql: str) -> None:
        self._run(sql)

    def query_json(self, sql: str) -> list[dict[str, Any]]:
        result = self._run(sql, "JSONEachRow")
        text = result.bytes() if hasattr(result, "bytes") else bytes(result)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def insert_json_each_row(
        self, table: str, rows: bytes, settings: dict[str, Any] | None = None
    ) -> None:
        if not rows:
            return
        source = str(self._rows_file).replace("\\", "\\\\").replace("'", "\\'")
        sql = (
            f"INSERT INTO {table} FROM INFILE '{source}'{_settings_clause(settings)}"
            " FORMAT JSONEachRow"
        )
        self._run(sql, rows=rows)

    def close(self) -> None:
        with self._lock:
            self._session.close()


class ServerDriver:
    """A ClickHouse server through clickhouse-connect (HTTP)."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect

        self._client = clickhouse_connect.get_client(dsn=url)

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as exc:
            raise ClickHouseError(str(exc).strip().splitlines()[0][:2000]) from None

    def query_json(self, sql: str) -> list[dict[str, Any]]:
        try:
            raw = self._client.raw_query(sql, fmt="JSONEachRow")
        except Exception as exc:
            raise ClickHouseError(str(exc).strip().splitlines()[0][:2000]) from None
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def insert_json_each_row(
        self, table: str, rows: bytes, settings: dict[str, Any] | None = None
    ) -> None:
        if not rows:
            return
        try:
            self._client.raw_insert(table, insert_block=rows, fmt="JSONEachRow", settings=settings)
        except Exception as exc:
            raise ClickHouseError(str(exc).strip().splitlines()[0][:2000]) from None

    def close(self) -> None:
        self._client.close()


def open_driver(kind: str, *, path: Path | None = None, url: str | None = None) -> ClickHouseDriver:
    """Open the driver named by the ``clickhouse_driver`` setting."""
    if kind == "chdb":
        if path is None:
            raise ValueError("chdb driver needs clickhouse_path")
        return ChdbDriver(path)
    if url is None:
        raise ValueError("server driver needs clickhouse_url")
    return ServerDriver(url)
