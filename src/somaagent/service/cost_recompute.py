"""Recompute stored call costs from their events and the rate-card version each names.

Every ``slm.metrics`` and ``llm.escalation.invocation`` row in ClickHouse (tables
``slm_metrics`` and ``escalation_metrics``) carries its token counts, its GPU ms and the
``rate_card_version`` it was priced with; ``domain.pricing.call_cost`` under
``book.get(model_id, rate_card_version)`` must give back the stored ``cost_usd`` exactly.
A row whose version the book does not know cannot be checked and counts as a difference.
(``llm.escalation.metrics`` window totals are sums, not calls, and are not recomputed.)

Exactness of the inputs: ``cost_usd`` is read as text (``toString`` of ``Decimal(38, 18)``),
never through a JSON number, and ``gpu_ms`` (``Float64``) as its 64 raw bits
(``reinterpretAsUInt64``), so the float priced here is bit-for-bit the float the producer
priced, whatever text format ClickHouse would print it in.

The service does no I/O of its own: ``query`` runs one SELECT and returns its rows (e.g.
``ClickHouseTelemetryStore.query``, the in-process store of the LOCAL gateway). Rows are
read in pages of ``page_size``, in ``(occurred_at, event_id)`` order, resuming after the
last row of the previous page.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Protocol

from somaagent.domain.money import SUM_CONTEXT
from somaagent.domain.pricing import COST_QUANTUM, call_cost
from somaagent.domain.ratecards import RateBook

__all__ = [
    "RECOMPUTED_TABLES",
    "EventQuery",
    "Mismatch",
    "RecomputeReport",
    "UnknownVersion",
    "parse_instant",
    "recompute",
]

# The tables of the two per-call event types (adapters.clickhouse_schema.TABLE_FOR_EVENT_TYPE).
RECOMPUTED_TABLES = ("slm_metrics", "escalation_metrics")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CH_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?")


class EventQuery(Protocol):
    """Runs one ClickHouse SELECT and returns its rows as JSON objects (``JSONEachRow``)."""

    def __call__(self, sql: str, /) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A row whose stored cost differs from the cost its rate-card version gives."""

    event_id: str
    event_type: str
    model_id: str
    rate_card_version: str
    stored: Decimal
    recomputed: Decimal


@dataclass(frozen=True, slots=True)
class UnknownVersion:
    """A row that names a ``(model_id, rate_card_version)`` the rate book does not hold."""

    event_id: str
    event_type: str
    model_id: str
    rate_card_version: str
    stored: Decimal


@dataclass(frozen=True, slots=True)
class RecomputeReport:
    """The outcome of one recompute over ``[start, end)``.

    ``stored_total`` sums every checked row; ``recomputed_total`` sums the rows whose
    version is known (an unknown version has no recomputed cost). ``mismatches`` and
    ``unknown_versions`` list at most ``max_listed`` rows each; the counts are exact.
    """

    start: datetime
    end: datetime
    rows_checked: int
    stored_total: Decimal
    recomputed_total: Decimal
    mismatch_count: int
    unknown_count: int
    mismatches: tuple[Mismatch, ...]
    unknown_versions: tuple[UnknownVersion, ...]
    rows_by_version: Mapping[str, int]

    @property
    def differences(self) -> int:
        """Rows that did not recompute to their stored cost (mismatched or unknown)."""
        return self.mismatch_count + self.unknown_count

    @property
    def ok(self) -> bool:
        """True when every row recomputed to exactly its stored cost."""
        return self.differences == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; amounts are decimal strings with 18 fraction digits, never JSON
        numbers."""
        return {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "rows_checked": self.rows_checked,
            "stored_total_usd": _usd(self.stored_total),
            "recomputed_total_usd": _usd(self.recomputed_total),
            "differences": self.differences,
            "mismatch_count": self.mismatch_count,
            "unknown_version_count": self.unknown_count,
            "rows_by_version": dict(self.rows_by_version),
            "mismatches": [
                {
                    "event_id": m.event_id,
                    "event_type": m.event_type,
                    "model_id": m.model_id,
                    "rate_card_version": m.rate_card_version,
                    "stored_usd": _usd(m.stored),
                    "recomputed_usd": _usd(m.recomputed),
                }
                for m in self.mismatches
            ],
            "unknown_versions": [
                {
                    "event_id": u.event_id,
                    "event_type": u.event_type,
                    "model_id": u.model_id,
                    "rate_card_version": u.rate_card_version,
                    "stored_usd": _usd(u.stored),
                }
                for u in self.unknown_versions
            ],
        }


@dataclass
class _Tally:
    max_listed: int
    rows: int = 0
    stored: Decimal = Decimal(0)
    recomputed: Decimal = Decimal(0)
    mismatch_count: int = 0
    unknown_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    unknown: list[UnknownVersion] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)

    def add(self, row: Mapping[str, Any], book: RateBook) -> None:
        event_id, event_type = str(row["id"]), str(row["event_type"])
        model_id, version = str(row["model_id"]), str(row["rate_card_version"])
        stored = Decimal(str(row["cost_text"]))
        self.rows += 1
        self.stored = SUM_CONTEXT.add(self.stored, stored)
        self.versions[version] += 1
        entry = book.get(model_id, version)
        if entry is None:
            self.unknown_count += 1
            if len(self.unknown) < self.max_listed:
                self.unknown.append(UnknownVersion(event_id, event_type, model_id, version, stored))
            return
        cost = call_cost(
            entry.pricing,
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            gpu_ms=_float_from_bits(int(row["gpu_ms_bits"])),
        )
        self.recomputed = SUM_CONTEXT.add(self.recomputed, cost)
        if cost != stored:
            self.mismatch_count += 1
            if len(self.mismatches) < self.max_listed:
                self.mismatches.append(
                    Mismatch(event_id, event_type, model_id, version, stored, cost)
                )


def recompute(
    query: EventQuery,
    book: RateBook,
    *,
    start: datetime,
    end: datetime,
    database: str = "soma",
    page_size: int = 20_000,
    max_listed: int = 1000,
) -> RecomputeReport:
    """Recompute the cost of every call event with ``start <= occurred_at < end``.

    ``start`` and ``end`` must be aware with ``start < end``; ``database`` is the ClickHouse
    database of the telemetry tables. Raises ``ValueError`` on bad arguments; errors of
    ``query`` propagate.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be aware datetimes")
    if not start < end:
        raise ValueError(f"start ({_iso(start)}) must be before end ({_iso(end)})")
    if not _IDENTIFIER.fullmatch(database):
        raise ValueError(f"{database!r} is not a ClickHouse database name")
    if page_size < 1 or max_listed < 0:
        raise ValueError("page_size must be >= 1 and max_listed >= 0")
    tally = _Tally(max_listed)
    for table in RECOMPUTED_TABLES:
        after: tuple[str, str] | None = None
        while True:
            rows = query(_page_sql(f"{database}.{table}", start, end, after, page_size))
            for row in rows:
                tally.add(row, book)
            if len(rows) < page_size:
                break
            after = _resume_key(rows[-1])
    return RecomputeReport(
        start=start.astimezone(UTC),
        end=end.astimezone(UTC),
        rows_checked=tally.rows,
        stored_total=tally.stored,
        recomputed_total=tally.recomputed,
        mismatch_count=tally.mismatch_count,
        unknown_count=tally.unknown_count,
        mismatches=tuple(tally.mismatches),
        unknown_versions=tuple(tally.unknown),
        rows_by_version=MappingProxyType(dict(sorted(tally.versions.items()))),
    )


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date (``2026-11-01``, midnight) or date-time (``Z`` or ``+hh:mm``) as an
    aware UTC datetime; one without a zone is read as UTC. ``ValueError`` otherwise."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _page_sql(
    table: str, start: datetime, end: datetime, after: tuple[str, str] | None, limit: int
) -> str:
    where = f"occurred_at >= {_ch_time(start)} AND occurred_at < {_ch_time(end)}"
    if after is not None:
        where += (
            f" AND (occurred_at, event_id) > (toDateTime64('{after[0]}', 6, 'UTC'),"
            f" toUUID('{after[1]}'))"
        )
    return (
        # Aliases must not reuse column names: ClickHouse would apply them in WHERE/ORDER BY.
        "SELECT toString(event_id) AS id, event_type, model_id, rate_card_version,"
        " input_tokens, output_tokens, cached_tokens,"
        " reinterpretAsUInt64(gpu_ms) AS gpu_ms_bits, toString(cost_usd) AS cost_text,"
        " toString(occurred_at) AS at"
        f" FROM {table} WHERE {where} ORDER BY occurred_at, event_id LIMIT {limit}"
        " SETTINGS output_format_json_quote_64bit_integers = 0"
    )


def _resume_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """``(occurred_at, event_id)`` of a returned row, checked before it goes back into SQL."""
    occurred, event_id = str(row["at"]), str(row["id"])
    if not _CH_TIME.fullmatch(occurred) or not _UUID.fullmatch(event_id):
        raise ValueError(f"unexpected row key {occurred!r}, {event_id!r}")
    return occurred, event_id


def _ch_time(instant: datetime) -> str:
    return f"toDateTime64('{instant.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC')"


def _float_from_bits(bits: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value


def _usd(amount: Decimal) -> str:
    """18 fraction digits, as events carry ``cost_usd`` (ClickHouse prints fewer)."""
    return format(SUM_CONTEXT.quantize(amount, COST_QUANTUM), "f")


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
