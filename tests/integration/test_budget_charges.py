"""The charge ledger's batched writes against the test stack's PostgreSQL: COPY, the
retried batch that repeats recorded ids, and text that needs COPY's escapes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from somaagent.adapters.budget_store import BudgetStore, ChargeWriter, charge_row
from somaagent.domain.budgets import Charge

WHEN = datetime(2026, 12, 8, 3, 0, 0, 123456, tzinfo=UTC)


def charge(tenant: str, n: int, *, persona: str = "dev", model: str = "m-1") -> Charge:
    return Charge(
        reservation_id=f"r-{uuid.uuid4().hex}",
        tenant=tenant,
        persona=persona,
        model_id=model,
        occurred_at=WHEN + timedelta(seconds=n),
        settled_at=WHEN + timedelta(seconds=n, microseconds=7),
        tokens=100 + n,
        cost_usd=Decimal("0.000016454916666667") * (n + 1),
        gpu_ms=Decimal("12.5") + n,
    )


def stored(dsn: str, tenant: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT reservation_id, tenant, persona, model_id, occurred_at, settled_at, tokens,"
            " cost_usd, gpu_ms FROM budget_charges WHERE tenant = %s ORDER BY tokens",
            (tenant,),
        ).fetchall()


def as_row(c: Charge) -> tuple[object, ...]:
    return (
        c.reservation_id, c.tenant, c.persona, c.model_id, c.occurred_at, c.settled_at,
        c.tokens, c.cost_usd, c.gpu_ms,
    )  # fmt: skip


def test_charges_are_stored_exactly_and_a_retried_batch_once(dsn: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    first = [charge(tenant, n) for n in range(40)]
    later = [charge(tenant, n) for n in range(40, 45)]

    async def scenario() -> None:
        store = BudgetStore(dsn)
        try:
            await store.record_charges(first)
            await store.record_charges(first)  # the same batch again: nothing new
            await store.record_charges(first[:3] + later)  # partly recorded already
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert stored(dsn, tenant) == [as_row(c) for c in first + later]


def test_text_that_needs_escapes_round_trips(dsn: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}\\tab\tnew\nline\rcr\\\\N"
    odd = [
        charge(tenant, 0, persona="a\\tb", model="m\\n"),
        charge(tenant, 1, persona="\\N", model="tab\there"),
        charge(tenant, 2, persona="é ü 漢字", model="back\\slash\\"),
    ]
    assert all(charge_row(c).count("\t") == 8 and charge_row(c).endswith("\n") for c in odd)

    async def scenario() -> None:
        store = BudgetStore(dsn)
        try:
            await store.record_charges(odd)
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert stored(dsn, tenant) == [as_row(c) for c in odd]


@asynccontextmanager
async def writer_on(dsn: str, interval_s: float) -> AsyncIterator[ChargeWriter]:
    """A charge writer on its own store; closed (what is pending written) afterwards."""
    store = BudgetStore(dsn)
    writer = ChargeWriter(store, interval_s=interval_s)
    try:
        yield writer
    finally:
        await writer.aclose()
        await store.aclose()


def test_the_writer_flushes_its_batches_through_copy(dsn: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    charges = [charge(tenant, n) for n in range(1200)]  # more than one batch of 500

    async def scenario() -> None:
        async with writer_on(dsn, interval_s=0.01) as writer:
            for c in charges:
                writer.add(c)
            writer.add(charges[0])  # a second add of one reservation is ignored
            await writer.flush()
            assert writer.pending() == []

    asyncio.run(scenario())
    assert stored(dsn, tenant) == [as_row(c) for c in charges]


def test_a_round_writes_what_was_pending_when_it_began(dsn: str) -> None:
    """Charges added while a round's write is in flight wait for the next round (else a
    slow write turns the writer into back-to-back writes of a few rows each)."""
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    before = [charge(tenant, n) for n in range(10)]
    during = [charge(tenant, n) for n in range(10, 13)]

    async def scenario() -> None:
        async with writer_on(dsn, interval_s=3600) as writer:  # no round of its own
            for c in before:
                writer.add(c)
            round_ = asyncio.create_task(writer._flush_arrived())
            await asyncio.sleep(0)  # the round took its list and waits for PostgreSQL
            for c in during:
                writer.add(c)
            await round_
            assert writer.pending() == during
            assert stored(dsn, tenant) == [as_row(c) for c in before]
            await writer.flush()
            assert writer.pending() == []

    asyncio.run(scenario())
    assert stored(dsn, tenant) == [as_row(c) for c in before + during]
