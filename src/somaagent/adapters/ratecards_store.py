"""Rate cards in PostgreSQL (table ``rate_cards``, migration 0003).

``load`` is all or nothing: one transaction that takes the table's loader lock, reads what
is stored for the models being loaded, and either inserts every new ``(model, version)`` or
writes nothing. An identical re-load is a no-op; a re-load of a stored version with other
values (versions are immutable) or a new version that would share an ``effective_from``
with a stored one raises ``RateCardError`` naming the model and version.

Administrative, not on the request path: each call opens its own connection. Migrations
must have run (``postgres.migrate``).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors

from somaagent.domain.ratecards import RateBook, RateCardEntry, RateCardError, plain_decimal
from somaagent.domain.routing import GpuPricing, Pricing, TokenPricing

__all__ = ["LoadReport", "RateCardStore", "RateCardStoreUnavailable"]

_COLUMNS = (
    "model_id, version, effective_from, input_per_1k, output_per_1k, cached_input_per_1k,"
    " gpu_hour_usd, gpus, max_ms_per_token, source"
)
Row = tuple[Any, ...]


class RateCardStoreUnavailable(Exception):
    """PostgreSQL cannot be reached or refused the connection; one line, no DSN."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What ``load`` did: versions newly stored, and versions already stored identically."""

    inserted: int
    unchanged: int


class RateCardStore:
    """Load and read versioned rate cards (see the module docstring). Connects per call."""

    def __init__(
        self, dsn: str, *, connect_timeout_s: float = 5.0, statement_timeout_ms: int = 30_000
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms

    def load(self, entries: Iterable[RateCardEntry]) -> LoadReport:
        """Store every entry not stored yet, in one transaction; ``RateCardError`` when any
        entry conflicts with another or with what is stored (then nothing is written)."""
        batch = list(entries)
        RateBook(batch)  # the batch itself: no repeated version, no overlap
        try:
            with self._connect() as conn, conn.transaction():
                # One loader at a time (readers are not blocked): two concurrent loads
                # cannot both pass the checks below with conflicting versions.
                conn.execute("LOCK TABLE rate_cards IN SHARE ROW EXCLUSIVE MODE")
                models = sorted({e.model_id for e in batch})
                stored = _select(conn, "WHERE model_id = ANY(%s)", (models,))
                by_key = {(e.model_id, e.version): e for e in stored}
                new: builtins.list[RateCardEntry] = []
                for entry in batch:
                    old = by_key.get((entry.model_id, entry.version))
                    if old is None:
                        new.append(entry)
                    elif old != entry:
                        raise RateCardError(
                            f"model {entry.model_id!r}: version {entry.version!r} is already"
                            f" stored with other values ({_differences(old, entry)});"
                            " versions are immutable: add a card with a new version"
                        )
                try:
                    RateBook([*stored, *new])
                except RateCardError as exc:
                    raise RateCardError(f"conflicts with the stored rate cards: {exc}") from None
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO rate_cards ({_COLUMNS})"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [_row(e) for e in new],
                    )
        except (errors.UniqueViolation, errors.CheckViolation) as exc:
            raise RateCardError(f"refused by the database: {_first_line(exc)}") from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise RateCardStoreUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}") from exc
        return LoadReport(inserted=len(new), unchanged=len(batch) - len(new))

    def list(self) -> builtins.list[RateCardEntry]:
        """Every stored entry, by model id, then oldest ``effective_from`` first."""
        try:
            with self._connect() as conn:
                return _select(conn, "", ())
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise RateCardStoreUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}") from exc

    def book(self) -> RateBook:
        """Every stored entry as a ``RateBook``."""
        return RateBook(self.list())

    def _connect(self) -> psycopg.Connection[Row]:
        return psycopg.connect(
            self._dsn,
            autocommit=True,  # the only transaction is the explicit one in ``load``
            connect_timeout=max(1, round(self._connect_timeout_s)),
            options=f"-c statement_timeout={self._statement_timeout_ms}",
        )


def _select(
    conn: psycopg.Connection[Row], where: str, params: tuple[Any, ...]
) -> list[RateCardEntry]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM rate_cards {where} ORDER BY model_id, effective_from", params
    ).fetchall()
    return [_entry(r) for r in rows]


def _plain(value: Decimal) -> Decimal:
    """``numeric(38, 18)`` comes back with 18 fraction digits; keep the value, drop the zeros."""
    return Decimal(plain_decimal(value))


def _entry(row: Row) -> RateCardEntry:
    model_id, version, effective_from, inp, out, cached, gpu_hour, gpus, max_ms, source = row
    pricing: Pricing
    if gpu_hour is not None:
        pricing = GpuPricing(gpu_hour_usd=_plain(gpu_hour), gpus=gpus)
    else:
        pricing = TokenPricing(
            input_per_1k=_plain(inp), output_per_1k=_plain(out), cached_input_per_1k=_plain(cached)
        )
    return RateCardEntry(
        model_id=model_id,
        version=version,
        effective_from=effective_from,
        pricing=pricing,
        max_ms_per_token=_plain(max_ms) if max_ms is not None else None,
        source=source,
    )


def _row(e: RateCardEntry) -> Row:
    p = e.pricing
    head = (e.model_id, e.version, e.effective_from)
    tail = (e.max_ms_per_token, e.source)
    if isinstance(p, TokenPricing):
        return (*head, p.input_per_1k, p.output_per_1k, p.cached_input_per_1k, None, None, *tail)
    return (*head, None, None, None, p.gpu_hour_usd, p.gpus, *tail)


def _differences(old: RateCardEntry, new: RateCardEntry) -> str:
    """Which values of a stored version a re-load would change, as ``field stored -> new``."""
    names = _COLUMNS.split(", ")
    pairs = zip(names, _row(old), _row(new), strict=True)
    return "; ".join(f"{name} {a} -> {b}" for name, a, b in pairs if a != b)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
