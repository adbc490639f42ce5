"""The I/O side of budget allotments (``service.budget_allotments`` has the rules and the
bookkeeping): opening, funding, draining and closing them, as part of ``BudgetService``.

A mixin, so that ``service.budgets`` stays one readable size: it shares the service's
reservations (``_open``, ``_finished``, ``_unsettled``), its tenant gate and its counters,
and every method here runs under the same rules as the service's own (see its docstring).
"""

from __future__ import annotations

import asyncio
import builtins
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from datetime import datetime

from somaagent.adapters.redis_budget import SettleStatus
from somaagent.domain.budgets import Amounts, Budget, BudgetError, Limits
from somaagent.service.budget_allotments import (
    ALLOTMENT_PREFIX,
    MARGIN_MS,
    Allotment,
    AllotmentAsk,
    AllotmentKey,
    allotment_size,
)
from somaagent.service.budget_ports import BudgetCounters
from somaagent.service.budget_records import (
    CounterReport,
    Hold,
    ReserveOutcome,
    Spec,
    states_of,
)
from somaagent.service.tenant_gate import TenantGate

__all__ = ["BudgetAllotting"]


class BudgetAllotting:
    """Allotments for ``BudgetService`` (which provides the attributes declared here)."""

    _counters: BudgetCounters
    _gate: TenantGate
    _limits: dict[Budget, Limits]
    _open: dict[str, Hold]
    _unsettled: dict[str, Hold]
    _finished: OrderedDict[str, None]
    _telling: set[asyncio.Task[None]]
    _cache_epoch: int

    def _init_allotments(self, calls: int, rotate_s: float) -> None:
        self._allot_calls = calls
        self._allot_s = rotate_s
        self._allotments: dict[AllotmentKey, Allotment] = {}  # the one funding new calls
        self._spare: dict[AllotmentKey, Allotment] = {}  # opened early: funds calls next
        self._allotted: dict[str, Allotment] = {}  # every open one, by reservation id
        self._opening: dict[AllotmentKey, asyncio.Task[Allotment | None]] = {}
        self._tight: dict[AllotmentKey, float] = {}  # no allotment tried until then

    # The service's own, used here.
    async def _rebuild(self, tenant: str, specs: Sequence[Spec]) -> builtins.list[CounterReport]:
        raise NotImplementedError

    def _send_redis(self, rid: str, r: Hold, *, deferred: bool = False) -> Awaitable[SettleStatus]:
        raise NotImplementedError

    async def _tell_later(self, rid: str, r: Hold, sent: Awaitable[SettleStatus]) -> None:
        raise NotImplementedError

    async def _reserve_allotted(
        self,
        tenant: str,
        persona: str,
        at: datetime,
        amounts: Amounts,
        rid: str,
        specs: Sequence[Spec],
        limits: Sequence[tuple[str, Limits]],
        lifetime_ms: int,
    ) -> ReserveOutcome | None:
        """Fund the call from this process's allotment for its counters, opening one when
        none has room; ``None``: reserve it on its own (near a limit, or no room)."""
        keys = tuple(k for k, _ in limits)
        key = (tenant, keys)
        ask = AllotmentAsk(key, persona, at, amounts, limits, lifetime_ms, specs)
        allot = self._funding(key, amounts, lifetime_ms)
        if allot is None:
            if self._tight.get(key, 0.0) > time.monotonic():
                return None
            await asyncio.shield(self._opening_task(ask))  # concurrent callers share it
            allot = self._funding(key, amounts, lifetime_ms)
            if allot is None:
                return None
            if rid in self._open or rid in self._finished:  # the same id, meanwhile
                raise BudgetError(f"reservation id {rid} was used already")
        states = states_of(self._limits, specs, allot.values())
        allot.take(amounts)
        now = time.monotonic()
        if allot.low(now) and key not in self._spare and self._tight.get(key, 0.0) <= now:
            # The next one opens now, so no call waits for it when this one runs out.
            self._opening_task(ask)
        deadline_ms = int(time.time() * 1000) + lifetime_ms
        self._open[rid] = Hold(tenant, persona, at, amounts, keys, deadline_ms, allotment=allot)
        return ReserveOutcome(True, rid, tuple(b for b, _ in specs), (), deadline_ms, states)

    def _funding(self, key: AllotmentKey, worst: Amounts, lifetime_ms: int) -> Allotment | None:
        """The allotment that funds a call of ``worst``: the current one, or the spare one
        (which becomes current, the other draining); ``None`` when neither can."""
        now = time.monotonic()
        current = self._allotments.get(key)
        if current is not None and current.fits(worst, lifetime_ms, now):
            return current
        spare = self._spare.get(key)
        if spare is None or not spare.fits(worst, lifetime_ms, now):
            return None
        del self._spare[key]
        if current is not None:
            self._drain(current)
        self._allotments[key] = spare
        return spare

    def _opening_task(self, ask: AllotmentAsk) -> asyncio.Task[Allotment | None]:
        """The opening of a new allotment for ``ask.key`` (one at a time per key)."""
        key = ask.key
        task = self._opening.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._new_allotment(ask))
            self._opening[key] = task

            def done(t: asyncio.Task[Allotment | None]) -> None:
                if self._opening.get(key) is t:
                    del self._opening[key]
                if not t.cancelled():
                    t.exception()  # retrieved: each waiter sees it

            task.add_done_callback(done)
        return task

    async def _new_allotment(self, ask: AllotmentAsk) -> Allotment | None:
        key, persona, at, worst, limits, lifetime_ms, specs = ask
        tenant, keys = key
        size = allotment_size(worst, self._allot_calls, [lim for _, lim in limits])
        if size is None:
            self._tight[key] = time.monotonic() + self._allot_s
            return None
        rid = f"{ALLOTMENT_PREFIX}{uuid.uuid4().hex}"
        life_ms = lifetime_ms + math.ceil(self._allot_s * 1000) + 2 * MARGIN_MS
        epoch = self._cache_epoch  # budgets changed meanwhile: these limits may be old
        for attempt in (1, 2):
            async with self._gate.shared(tenant):
                opened = time.monotonic()  # before the script: Redis's deadline is later
                result = await self._counters.reserve(tenant, rid, limits, size, life_ms)
                if result.status == "reserved":
                    assert result.deadline_ms is not None
                    allot = Allotment(
                        rid, tenant, keys, size, opened, opened + self._allot_s, life_ms,
                        result.values,
                    )  # fmt: skip
                    # Held like any reservation: a rebuild puts it back, the reaper frees it.
                    self._open[rid] = Hold(tenant, persona, at, size, keys, result.deadline_ms)
                    self._allotted[rid] = allot
                    break
            if result.status != "missing" or attempt == 2:
                self._tight[key] = time.monotonic() + self._allot_s  # near a limit
                return None
            await self._rebuild(tenant, [specs[i] for i in result.missing])  # a new window
        if epoch != self._cache_epoch:
            self._drain(allot)  # released at once, nothing funded
            return None
        spare = self._spare.get(key)
        if spare is not None:  # opened for a call it could not fund
            self._drain(spare)
        if key in self._allotments:
            self._spare[key] = allot  # the current one funds calls while it can
        else:
            self._allotments[key] = allot
        asyncio.get_running_loop().call_later(self._allot_s, self._drain, allot)
        return allot

    def _drain(self, allot: Allotment, *, in_gate: bool = False) -> None:
        """Fund no more calls from ``allot``; close it once its last call has settled."""
        if allot.reservation_id not in self._allotted:
            return  # closed already
        allot.draining = True
        key = (allot.tenant, allot.keys)
        if self._allotments.get(key) is allot:
            del self._allotments[key]
        if self._spare.get(key) is allot:
            del self._spare[key]
        if allot.closable:
            if in_gate:
                self._close_allotment(allot)
            else:
                self._spawn(self._close_later(allot))

    async def _close_later(self, allot: Allotment) -> None:
        async with self._gate.shared(allot.tenant):
            self._close_allotment(allot)

    def _close_allotment(self, allot: Allotment) -> None:
        """Turn the hold into what the funded calls owe, per counter (one settle script,
        queued now; retried in the background like any settle)."""
        rid = allot.reservation_id
        if self._allotted.pop(rid, None) is None:
            return
        r = self._open.pop(rid, None)
        if r is None:
            return  # forgotten long past its deadline
        self._finished[rid] = None
        r.actual = allot.settled
        r.per_counter = tuple(allot.owed)
        self._unsettled[rid] = r
        self._spawn(self._tell_later(rid, r, self._send_redis(rid, r, deferred=True)))

    def _forgive(self, tenant: str, keys: set[str]) -> None:
        """Counters ``keys`` were rebuilt from the ledger or reset: the open allotments on
        them owe them nothing so far, and fund no more calls (their snapshot is stale)."""
        if not keys:
            return
        for allot in list(self._allotted.values()):
            if allot.tenant == tenant and not keys.isdisjoint(allot.keys):
                allot.forgive(keys)
                self._drain(allot, in_gate=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)
