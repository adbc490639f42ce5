"""What ``BudgetService`` needs from the outside: the budget repository (PostgreSQL), the
counters (Redis) and the batching charge ledger. The adapters implement them."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Protocol

from somaagent.adapters.redis_budget import (
    CounterValues,
    RebuildCounter,
    RebuildReservation,
    ReserveResult,
    SettleStatus,
)
from somaagent.domain.budgets import (
    Amounts,
    Budget,
    BudgetCreate,
    BudgetUpdate,
    Charge,
    Limits,
    ResetRecord,
    WindowTotals,
)

__all__ = ["BudgetCounters", "BudgetRepository", "ChargeLedger"]


class BudgetRepository(Protocol):
    async def create(self, data: BudgetCreate, *, now: datetime | None = None) -> Budget: ...
    async def get(self, budget_id: str) -> Budget: ...
    async def list(self, tenant: str | None = None) -> builtins.list[Budget]: ...
    async def update(
        self, budget_id: str, change: BudgetUpdate, *, now: datetime | None = None
    ) -> Budget: ...
    async def delete(self, budget_id: str) -> Budget: ...
    async def window_charges(
        self,
        *,
        tenant: str,
        persona: str | None,
        start: datetime,
        end: datetime,
        since: datetime | None = None,
    ) -> WindowTotals: ...
    async def record_reset(self, record: ResetRecord) -> ResetRecord: ...
    async def last_reset(self, budget_id: str, window_key: str) -> ResetRecord | None: ...


class BudgetCounters(Protocol):
    async def reserve(
        self,
        tenant: str,
        reservation_id: str,
        counters: Sequence[tuple[str, Limits]],
        amounts: Amounts,
        lifetime_ms: int,
    ) -> ReserveResult: ...
    # Both queue their command when called (ahead of any later one), then may be awaited;
    # ``deferred``: nobody waits for the reply, the command may leave with the next one.
    def settle(
        self,
        tenant: str,
        reservation_id: str,
        counters: Sequence[str],
        actual: Amounts,
        *,
        deferred: bool = False,
        per_counter: Sequence[Amounts] | None = None,
    ) -> Awaitable[SettleStatus]: ...
    def release(
        self, tenant: str, reservation_id: str, counters: Sequence[str], *, deferred: bool = False
    ) -> Awaitable[SettleStatus]: ...
    async def rebuild(
        self,
        tenant: str,
        counters: Sequence[RebuildCounter],
        reservations: Sequence[RebuildReservation],
    ) -> builtins.list[bool]: ...
    async def reset(self, key: str) -> Amounts | None: ...
    async def read(self, keys: Sequence[str]) -> builtins.list[CounterValues | None]: ...


class ChargeLedger(Protocol):
    """The batching charge writer (``adapters.budget_store.ChargeWriter``)."""

    lock: asyncio.Lock

    def add(self, charge: Charge) -> None: ...
    def pending(self, tenant: str | None = None) -> builtins.list[Charge]: ...
    async def flush(self) -> None: ...
    async def aclose(self) -> None: ...
