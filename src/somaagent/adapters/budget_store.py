"""Budgets in PostgreSQL (migration 0004): CRUD, the exact charge ledger, reset audit.

``BudgetStore`` holds one asynchronous connection, used under a lock and reopened after a
failure; nothing connects before the first call. Connection failures raise
``BudgetUnavailable``; invalid input and unknown ids raise ``BudgetError`` /
``UnknownBudget`` before anything is written (each write is one statement or one
transaction, so nothing is ever half-written).

``ChargeWriter`` batches settled charges into ``budget_charges`` from a background task
(every ``interval_s`` or ``max_rows`` rows, by COPY; a retried batch is harmless: the ids
already recorded are skipped) and keeps every charge visible in ``pending`` until its
batch has committed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import orjson
import psycopg
from psycopg import errors

from somaagent.domain.budgets import (
    Amounts,
    Budget,
    BudgetCreate,
    BudgetError,
    BudgetUnavailable,
    BudgetUpdate,
    Charge,
    ResetRecord,
    UnknownBudget,
    WindowTotals,
    check_budget_id,
)

__all__ = ["BudgetStore", "ChargeRecorder", "ChargeWriter", "charge_row"]

log = logging.getLogger("somaagent.budgets")
T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

_COLUMNS = (
    "budget_id, tenant, persona, period, timezone, limit_tokens, limit_usd, limit_gpu_hours,"
    " on_exceed, approval_above_usd, created_at, updated_at"
)
_WINDOW_SUMS = (
    "SELECT count(*), coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0),"
    " coalesce(sum(gpu_ms), 0), coalesce(sum(ceil(cost_usd * 1000000000)), 0),"
    " coalesce(sum(ceil(gpu_ms * 1000)), 0) FROM budget_charges"
    " WHERE tenant = %(tenant)s AND occurred_at >= %(start)s AND occurred_at < %(end)s"
)
# Charges are written with COPY: PostgreSQL parses the rows, the event loop only joins
# strings, so a flush does not stall the requests sharing it. Every value crosses as text:
# exact.
_CHARGE_COLUMNS = (
    "reservation_id, tenant, persona, model_id, occurred_at, settled_at, tokens, cost_usd, gpu_ms"
)
_COPY_CHARGES = f"COPY budget_charges ({_CHARGE_COLUMNS}) FROM STDIN"
# A batch that repeats a recorded reservation id (a retry after an acknowledgement was lost)
# is copied into a temporary table and merged, skipping what is already there.
_BATCH_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS charge_batch (LIKE budget_charges INCLUDING DEFAULTS)"
    " ON COMMIT DELETE ROWS"
)
_COPY_BATCH = f"COPY charge_batch ({_CHARGE_COLUMNS}) FROM STDIN"
_MERGE_BATCH = (
    f"INSERT INTO budget_charges ({_CHARGE_COLUMNS}) SELECT {_CHARGE_COLUMNS} FROM charge_batch"
    " ON CONFLICT (reservation_id) DO NOTHING"
)
# COPY's text format: a tab between columns, a newline after a row, backslash escapes.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_RESET_COLUMNS = (
    "reset_id, budget_id, tenant, window_key, reset_at, actor, reason, spent_before_tokens,"
    " spent_before_usd, spent_before_gpu_ms"
)


def charge_row(c: Charge) -> str:
    """One charge as a row of COPY's text format for ``record_rows`` (Decimals as exact
    strings, times in RFC 3339 with their offset, text escaped). Built on the gateway's
    event loop for every call, so the common case is kept cheap: orjson writes both times
    (0.7 µs, ``isoformat`` takes 2 µs each), and text is escaped only when it has to be."""
    a, b, p, m = c.reservation_id, c.tenant, c.persona, c.model_id
    plain = a + b + p + m
    if not plain.isprintable() or "\\" in plain:  # a tab, newline, CR or backslash
        a, b, p, m = (t.translate(_COPY_ESCAPES) for t in (a, b, p, m))
    times = orjson.dumps((c.occurred_at, c.settled_at)).decode()[2:-2].replace('","', "\t")
    return f"{a}\t{b}\t{p}\t{m}\t{times}\t{c.tokens}\t{c.cost_usd}\t{c.gpu_ms}\n"


def _budget(row: tuple[Any, ...]) -> Budget:
    return Budget(*row)


def _reset(row: tuple[Any, ...]) -> ResetRecord:
    names = [n.strip() for n in _RESET_COLUMNS.split(",")]
    return ResetRecord(**dict(zip(names, row, strict=True)))


class BudgetStore:
    """Budgets, charges and resets in PostgreSQL (see the module docstring)."""

    def __init__(
        self, dsn: str, *, connect_timeout_s: float = 5.0, statement_timeout_ms: int = 10_000
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._conn: Conn | None = None
        self._lock = asyncio.Lock()

    # -- budgets ---------------------------------------------------------------------------

    async def create(self, data: BudgetCreate, *, now: datetime | None = None) -> Budget:
        """Store a new budget (``data`` is validated already); ``BudgetError`` when its scope
        (tenant, persona, window) already has one."""
        budget = data.budget(secrets.token_hex(8), now or datetime.now(UTC))

        async def insert(conn: Conn) -> Budget:
            try:
                cur = await conn.execute(
                    f"INSERT INTO budgets ({_COLUMNS}) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {_COLUMNS}",
                    _row(budget),
                )
            except errors.UniqueViolation:
                raise BudgetError(
                    f"{budget.scope} already has a {budget.window} budget"
                    " (update it, or delete it first)"
                ) from None
            row = await cur.fetchone()
            assert row is not None
            return _budget(row)

        return await self._run(insert, retry=False)

    async def get(self, budget_id: str) -> Budget:
        """The budget with this id; ``UnknownBudget`` when there is none."""
        check_budget_id(budget_id)

        async def select(conn: Conn) -> Budget:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM budgets WHERE budget_id = %s", (budget_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownBudget(f"no budget {budget_id}")
            return _budget(row)

        return await self._run(select, retry=True)

    async def list(self, tenant: str | None = None) -> builtins.list[Budget]:
        """Every budget (of ``tenant`` when given), by tenant, persona (tenant-wide first)
        and window."""

        async def select(conn: Conn) -> builtins.list[Budget]:
            where = "" if tenant is None else " WHERE tenant = %(tenant)s"
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM budgets{where}"
                " ORDER BY tenant, persona NULLS FIRST, period, budget_id",
                {"tenant": tenant},
            )
            return [_budget(row) for row in await cur.fetchall()]

        return await self._run(select, retry=True)

    async def update(
        self, budget_id: str, change: BudgetUpdate, *, now: datetime | None = None
    ) -> Budget:
        """Apply ``change`` under a row lock; ``UnknownBudget`` / ``BudgetError`` when the
        budget does not exist or the result would be invalid (nothing is written then)."""
        check_budget_id(budget_id)

        async def write(conn: Conn) -> Budget:
            async with conn.transaction():
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM budgets WHERE budget_id = %s FOR UPDATE",
                    (budget_id,),
                )
                row = await cur.fetchone()
                if row is None:
                    raise UnknownBudget(f"no budget {budget_id}")
                updated = change.apply(_budget(row), now or datetime.now(UTC))
                await conn.execute(
                    "UPDATE budgets SET limit_tokens = %s, limit_usd = %s, limit_gpu_hours = %s,"
                    " on_exceed = %s, approval_above_usd = %s, updated_at = %s"
                    " WHERE budget_id = %s",
                    (
                        updated.limit_tokens,
                        updated.limit_usd,
                        updated.limit_gpu_hours,
                        updated.on_exceed,
                        updated.approval_above_usd,
                        updated.updated_at,
                        budget_id,
                    ),
                )
            return updated

        return await self._run(write, retry=False)

    async def delete(self, budget_id: str) -> Budget:
        """Delete the budget and return it; ``UnknownBudget`` when there is none. Its reset
        audit rows and the charges stay."""
        check_budget_id(budget_id)

        async def remove(conn: Conn) -> Budget:
            cur = await conn.execute(
                f"DELETE FROM budgets WHERE budget_id = %s RETURNING {_COLUMNS}", (budget_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownBudget(f"no budget {budget_id}")
            return _budget(row)

        return await self._run(remove, retry=False)

    # -- charges and resets ----------------------------------------------------------------

    async def record_charges(self, charges: Sequence[Charge]) -> None:
        """Insert charges in one statement; a reservation id already recorded is skipped."""
        await self.record_rows([charge_row(c) for c in charges])

    async def record_rows(self, rows: Sequence[str]) -> None:
        """Insert charges serialised by ``charge_row`` with one COPY (two round trips: the
        statement, then the rows and their end; PostgreSQL spends about half the CPU of an
        INSERT from a JSON document on it).

        A reservation id already recorded fails the COPY as a whole; the batch then goes
        through a temporary table, which skips the ids already there (a retried batch is
        harmless, as before).
        """
        if not rows:
            return
        data = "".join(rows)

        async def insert(conn: Conn) -> None:
            try:
                async with conn.cursor().copy(_COPY_CHARGES) as copy:
                    await copy.write(data)
            except errors.UniqueViolation:
                async with conn.transaction():
                    await conn.execute(_BATCH_TABLE)
                    async with conn.cursor().copy(_COPY_BATCH) as copy:
                        await copy.write(data)
                    await conn.execute(_MERGE_BATCH)

        await self._run(insert, retry=True)

    async def window_charges(
        self,
        *,
        tenant: str,
        persona: str | None,
        start: datetime,
        end: datetime,
        since: datetime | None = None,
    ) -> WindowTotals:
        """Charges of ``tenant`` (of ``persona`` only, when given) that occurred in
        ``[start, end)`` and were settled after ``since``: exact sums and counter units."""
        sql = _WINDOW_SUMS
        if persona is not None:
            sql += " AND persona = %(persona)s"
        if since is not None:
            sql += " AND settled_at > %(since)s"
        params = {"tenant": tenant, "persona": persona, "start": start, "end": end}
        params["since"] = since

        async def select(conn: Conn) -> WindowTotals:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
            assert row is not None
            count, tokens, cost, gpu_ms, nano, micro = row
            return WindowTotals(
                charges=int(count),
                tokens=int(tokens),
                cost_usd=Decimal(cost),
                gpu_ms=Decimal(gpu_ms),
                units=Amounts(int(tokens), int(nano), int(micro)),
            )

        return await self._run(select, retry=True)

    async def record_reset(self, record: ResetRecord) -> ResetRecord:
        """Insert one reset audit row; the stored record (with its ``reset_id``)."""

        async def insert(conn: Conn) -> ResetRecord:
            cur = await conn.execute(
                "INSERT INTO budget_resets (budget_id, tenant, window_key, reset_at, actor,"
                " reason, spent_before_tokens, spent_before_usd, spent_before_gpu_ms)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_RESET_COLUMNS}",
                (
                    record.budget_id,
                    record.tenant,
                    record.window_key,
                    record.reset_at,
                    record.actor,
                    record.reason,
                    record.spent_before_tokens,
                    record.spent_before_usd,
                    record.spent_before_gpu_ms,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            return _reset(row)

        return await self._run(insert, retry=False)

    async def last_reset(self, budget_id: str, window_key: str) -> ResetRecord | None:
        """The latest manual reset of this budget window, if any."""

        async def select(conn: Conn) -> ResetRecord | None:
            cur = await conn.execute(
                f"SELECT {_RESET_COLUMNS} FROM budget_resets"
                " WHERE budget_id = %s AND window_key = %s ORDER BY reset_at DESC, reset_id DESC"
                " LIMIT 1",
                (budget_id, window_key),
            )
            row = await cur.fetchone()
            return None if row is None else _reset(row)

        return await self._run(select, retry=True)

    # -- connection ------------------------------------------------------------------------

    async def _run(self, work: Callable[[Conn], Awaitable[T]], *, retry: bool) -> T:
        """Run ``work`` on the connection under the lock; reconnect once when it broke.

        ``retry`` only for work that is safe to repeat (reads, idempotent inserts).
        """
        async with self._lock:
            for attempt in (1, 2):
                try:
                    return await work(await self._connection())
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    await self._drop()
                    if attempt == 2 or not retry:
                        lines = str(exc).strip().splitlines()
                        first = lines[0] if lines else type(exc).__name__
                        raise BudgetUnavailable(f"PostgreSQL unavailable: {first}") from exc
            raise AssertionError("unreachable")

    async def _connection(self) -> Conn:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout_s)),
            options=f"-c statement_timeout={self._statement_timeout_ms}",
        )
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        """Close the connection (a later call opens another)."""
        async with self._lock:
            await self._drop()


def _row(b: Budget) -> tuple[Any, ...]:
    return (
        b.budget_id,
        b.tenant,
        b.persona,
        b.window,
        b.timezone,
        b.limit_tokens,
        b.limit_usd,
        b.limit_gpu_hours,
        b.on_exceed,
        b.approval_above_usd,
        b.created_at,
        b.updated_at,
    )


class ChargeRecorder(Protocol):
    async def record_rows(self, rows: Sequence[str]) -> None: ...


class ChargeWriter:
    """Batches charges into the ledger from a background task (see the module docstring).

    Hold ``lock`` to keep flushes out: while it is held, every charge is either committed
    in PostgreSQL or listed by ``pending`` — never neither, never both.
    """

    def __init__(
        self,
        store: ChargeRecorder,
        *,
        interval_s: float = 0.05,
        max_rows: int = 500,
        retry_s: float = 1.0,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._retry_s = retry_s
        self._pending: dict[str, tuple[Charge, str]] = {}  # id -> (charge, its ledger row)
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, charge: Charge) -> None:
        """Queue a charge (a second one with the same reservation id is ignored)."""
        if self._closed:
            raise RuntimeError("the charge writer is closed")
        if charge.reservation_id not in self._pending:
            self._pending[charge.reservation_id] = (charge, charge_row(charge))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="budget-charge-writer"
            )
        if len(self._pending) >= self._max_rows:
            self._wake.set()

    def pending(self, tenant: str | None = None) -> builtins.list[Charge]:
        """Charges not yet committed (of ``tenant`` when given)."""
        return [c for c, _ in self._pending.values() if tenant is None or c.tenant == tenant]

    async def flush(self) -> None:
        """Write every pending charge now (in batches of ``max_rows``), those added while
        it writes too."""
        async with self.lock:
            while self._pending:
                await self._write(list(self._pending)[: self._max_rows])

    async def _flush_arrived(self) -> None:
        """Write the charges pending now; those added meanwhile wait for the next round.
        Otherwise a write that takes longer than the next charge takes to arrive turns the
        writer into back-to-back writes of a few rows each (a commit each), which kept
        PostgreSQL and the event loop busy between the rounds meant to batch them."""
        async with self.lock:
            ids = list(self._pending)
            for start in range(0, len(ids), self._max_rows):
                await self._write(ids[start : start + self._max_rows])

    async def _write(self, ids: builtins.list[str]) -> None:
        """Commit these pending charges (under ``lock``), then drop them from ``pending``."""
        await self._store.record_rows([self._pending[rid][1] for rid in ids])
        for rid in ids:
            self._pending.pop(rid, None)

    async def _run(self) -> None:
        while True:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval_s):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_arrived()
            except Exception as exc:  # keep writing: a lost writer would lose every charge
                log.warning(
                    "budget charges not written yet (%d pending): %s", len(self._pending), exc
                )
                await asyncio.sleep(self._retry_s)

    async def aclose(self) -> None:
        """Stop the background task and write what is left (raises if that fails)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
