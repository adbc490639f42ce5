"""Budget enforcement: reserve before a call, settle or release after it, rebuild, reset.

Contracts:

* ``reserve`` holds the caller's worst case on every budget that applies (tenant-wide and
  the persona's, each in its current window) atomically in Redis, or refuses and names each
  budget and dimension that would be exceeded with what remains. Counters that are missing
  (never initialised, flushed, a new window) are rebuilt and the reservation retried once.
* ``settle`` records the exact charge (``budget_charges``, through the batching writer) and
  moves the reservation from reserved to spent; ``release`` frees it. Both are idempotent
  per reservation id and never raise because Redis is down: the Redis side is retried in
  the background and the charge is in the ledger either way.
* A rebuilt counter = charges in its window settled after the window's last manual reset
  (PostgreSQL, plus this process's charges not yet written) + this process's open
  reservations, written only if still missing. Within one process every operation on a
  tenant's counters is excluded while that tenant is rebuilt or reset, so the rebuilt value
  is exactly what Redis would have held. Across processes see docs/decisions.md: charges of
  *other* replicas not yet written and their open reservations are not in a rebuild.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal

from somaagent.adapters.redis_budget import (
    RebuildCounter,
    RebuildReservation,
    SettleStatus,
)
from somaagent.domain.budgets import (
    Amounts,
    Budget,
    BudgetCreate,
    BudgetError,
    BudgetState,
    BudgetSummary,
    BudgetUnavailable,
    BudgetUpdate,
    Charge,
    Limits,
    ResetRecord,
    Window,
    WindowTotals,
    counter_key,
    summarize,
    window_of,
)
from somaagent.service.budget_allotting import BudgetAllotting
from somaagent.service.budget_ports import BudgetCounters, BudgetRepository, ChargeLedger
from somaagent.service.budget_records import (
    CounterReport,
    Exceeded,
    Hold,
    RebuildReport,
    ReserveOutcome,
    Spec,
    UnknownReservation,
    check_reservation_id,
    counter_reports,
    limits_of,
    states_of,
    utc_now,
)
from somaagent.service.tenant_gate import TenantGate

__all__ = [
    "BudgetCounters",
    "ChargeLedger",
    "BudgetRepository",
    "BudgetService",
    "BudgetState",
    "BudgetSummary",
    "CounterReport",
    "Exceeded",
    "RebuildReport",
    "ReserveOutcome",
    "UnknownReservation",
]

log = logging.getLogger("somaagent.budgets")
_COUNTER_GRACE_S = 86_400  # a counter outlives its window by a day
_KEEP_EXPIRED_S = 3_600  # an unsettled reservation is forgotten an hour after its deadline
_KEEP_REFUSED_S = 60  # a refused one (settle still allowed) a minute after
_FINISHED_KEPT = 100_000  # ids remembered as settled, so a repeat is a no-op


class BudgetService(BudgetAllotting):
    """Budgets for the gateway, the CLI and the API (see the module docstring)."""

    def __init__(
        self,
        store: BudgetRepository,
        counters: BudgetCounters,
        writer: ChargeLedger,
        *,
        cache_ttl_s: float = 5.0,
        cache_max_tenants: int = 10_000,
        retry_interval_s: float = 0.5,
        clock: Callable[[], datetime] = utc_now,
        allotment_calls: int = 0,
        allotment_s: float = 0.5,
    ) -> None:
        """``allotment_calls`` > 0: reserve calls from allotments of that many worst cases,
        each funding calls for ``allotment_s`` (``service.budget_allotments``)."""
        self._store = store
        self._counters = counters
        self._writer = writer
        self._cache_ttl_s = cache_ttl_s
        self._cache_max = cache_max_tenants
        self._retry_interval_s = retry_interval_s
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, tuple[Budget, ...]]] = OrderedDict()
        self._limits: dict[Budget, Limits] = {}  # units of the cached budgets
        self._windows: dict[tuple[str, str], Window] = {}  # last window per (kind, zone)
        self._loading: dict[str, asyncio.Task[builtins.list[Budget]]] = {}
        self._cache_epoch = 0
        self._gate = TenantGate()
        self._rebuilding: dict[str, asyncio.Task[builtins.list[CounterReport]]] = {}
        self._open: dict[str, Hold] = {}
        self._unsettled: dict[str, Hold] = {}  # finished here, Redis not told yet
        self._finished: OrderedDict[str, None] = OrderedDict()  # recently settled ids
        self._maintenance: asyncio.Task[None] | None = None
        self._telling: set[asyncio.Task[None]] = set()  # settles sent without waiting
        self._init_allotments(allotment_calls, allotment_s)

    # -- budgets (CRUD invalidates this process's cache at once) ----------------------------

    async def create(self, data: BudgetCreate) -> Budget:
        budget = await self._store.create(data)
        self._invalidate(budget.tenant)
        return budget

    async def get(self, budget_id: str) -> Budget:
        return await self._store.get(budget_id)

    async def list(self, tenant: str | None = None) -> builtins.list[Budget]:
        return await self._store.list(tenant)

    async def update(self, budget_id: str, change: BudgetUpdate) -> Budget:
        budget = await self._store.update(budget_id, change)
        self._invalidate(budget.tenant)
        return budget

    async def delete(self, budget_id: str) -> Budget:
        budget = await self._store.delete(budget_id)
        self._invalidate(budget.tenant)
        return budget

    def _invalidate(self, tenant: str) -> None:
        self._cache_epoch += 1
        self._cache.pop(tenant, None)
        self._loading.pop(tenant, None)
        for allot in [a for a in self._allotted.values() if a.tenant == tenant]:
            self._drain(allot)  # limits may have changed: new allotments under the new ones

    async def applicable(self, tenant: str, persona: str) -> builtins.list[Budget]:
        """The tenant-wide and ``persona`` budgets of ``tenant``, from a cache that lives
        ``cache_ttl_s`` (one PostgreSQL query per tenant and TTL, shared by concurrent
        callers)."""
        return [b for b in await self._tenant_budgets(tenant) if b.persona in (None, persona)]

    async def _tenant_budgets(self, tenant: str) -> tuple[Budget, ...]:
        entry = self._cache.get(tenant)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        task = self._loading.get(tenant)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(tenant, self._cache_epoch))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._loading[tenant] = task
        return tuple(await asyncio.shield(task))

    async def _load(self, tenant: str, epoch: int) -> builtins.list[Budget]:
        try:
            budgets = await self._store.list(tenant)
        finally:
            if self._loading.get(tenant) is asyncio.current_task():
                del self._loading[tenant]
        if epoch == self._cache_epoch:
            self._cache[tenant] = (time.monotonic() + self._cache_ttl_s, tuple(budgets))
            self._cache.move_to_end(tenant)
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
            if len(self._limits) > 4 * self._cache_max:
                self._limits.clear()
        return budgets

    # -- reservations ----------------------------------------------------------------------

    async def reserve(
        self,
        *,
        tenant: str,
        persona: str,
        amounts: Amounts,
        reservation_id: str,
        deadline_s: float,
        at: datetime | None = None,
    ) -> ReserveOutcome:
        """Hold ``amounts`` (the call's worst case) on every applicable budget until the call
        settles or ``deadline_s`` passes (then the hold is reaped). See the module docstring.

        Raises ``BudgetError`` for a bad or reused id or amounts, ``BudgetUnavailable`` when
        Redis or PostgreSQL cannot be reached.
        """
        check_reservation_id(reservation_id)
        amounts.checked()
        if not 0 < deadline_s <= 86_400:
            raise BudgetError("deadline_s must be more than 0 and at most one day")
        if reservation_id in self._open or reservation_id in self._finished:
            raise BudgetError(f"reservation id {reservation_id} was used already")
        at = at or self._clock()
        specs = [(b, self._window(b, at)) for b in await self.applicable(tenant, persona)]
        keys = tuple(counter_key(tenant, b.budget_id, w.key) for b, w in specs)
        budgets = tuple(b for b, _ in specs)
        self._start_maintenance()
        if not specs:
            deadline = int(time.time() * 1000 + deadline_s * 1000)
            self._open[reservation_id] = Hold(tenant, persona, at, amounts, (), deadline)
            return ReserveOutcome(True, reservation_id, budgets)
        limits = [(k, limits_of(self._limits, b)) for k, (b, _) in zip(keys, specs, strict=True)]
        lifetime_ms = math.ceil(deadline_s * 1000)
        if self._allot_calls > 0:
            funded = await self._reserve_allotted(
                tenant, persona, at, amounts, reservation_id, specs, limits, lifetime_ms
            )
            if funded is not None:
                return funded
        for attempt in (1, 2):
            async with self._gate.shared(tenant):
                result = await self._counters.reserve(
                    tenant, reservation_id, limits, amounts, lifetime_ms
                )
                if result.status == "reserved":
                    assert result.deadline_ms is not None
                    self._open[reservation_id] = Hold(
                        tenant, persona, at, amounts, keys, result.deadline_ms
                    )
                    states = states_of(self._limits, specs, result.values)
                    return ReserveOutcome(
                        True, reservation_id, budgets, (), result.deadline_ms, states
                    )
            if result.status != "missing" or attempt == 2:
                break
            await self._rebuild(tenant, [specs[i] for i in result.missing])
        if result.status == "duplicate":
            raise BudgetError(f"reservation id {reservation_id} was used already")
        if result.status == "missing":
            raise BudgetUnavailable("budget counters vanished again right after their rebuild")
        self._open[reservation_id] = Hold(
            tenant, persona, at, amounts, keys, int(time.time() * 1000) + lifetime_ms, held=False
        )
        exceeded = tuple(
            Exceeded(
                budget=specs[i][0],
                window=specs[i][1],
                dimension=dim,
                limit=limits[i][1].get(dim) or 0,
                requested=dict(amounts.items())[dim],
                remaining=remaining,
            )
            for i, dim, remaining in result.exceeded
        )
        states = states_of(self._limits, specs, result.values)
        return ReserveOutcome(False, reservation_id, budgets, exceeded, states=states)

    async def settle(
        self,
        reservation_id: str,
        *,
        model_id: str,
        tokens: int,
        cost_usd: Decimal,
        gpu_ms: Decimal,
        wait: bool = True,
    ) -> Amounts:
        """Record what the call cost (exact) and turn its hold into spend; return the units
        charged (``Amounts.of_charge``).

        A second settle or release of the same id does nothing; an id this process never
        reserved raises ``UnknownReservation``. ``cost_usd`` has at most 18 decimal places.
        ``wait=False`` returns once the charge is recorded here and tells Redis in the
        background (the gateway answers its caller meanwhile): until then the counters
        still hold the reservation, which errs on the safe side, and every later operation
        of this process on those counters goes out on the same connection after it.
        """
        if not isinstance(model_id, str) or not 1 <= len(model_id) <= 256:
            raise BudgetError("model_id must be 1-256 characters")
        if type(tokens) is not int:
            raise BudgetError("tokens must be an int")
        actual = Amounts.of_charge(tokens, cost_usd, gpu_ms).checked()
        if cost_usd != cost_usd.quantize(Decimal("1e-18")):
            raise BudgetError("cost_usd has more than 18 decimal places")
        await self._finish(reservation_id, actual, model_id, cost_usd, gpu_ms, wait=wait)
        return actual

    async def release(self, reservation_id: str) -> None:
        """Free the hold of a call that did not happen (or failed without cost)."""
        await self._finish(reservation_id, None, "", Decimal(0), Decimal(0))

    async def _finish(
        self,
        rid: str,
        actual: Amounts | None,
        model_id: str,
        cost_usd: Decimal,
        gpu_ms: Decimal,
        *,
        wait: bool = True,
    ) -> None:
        r = self._open.get(rid)
        if r is None:
            if rid in self._finished:
                return
            raise UnknownReservation(f"no open reservation {rid} in this process")
        async with self._gate.shared(r.tenant):
            if self._open.pop(rid, None) is None:
                return  # a concurrent settle or release took it
            self._finished[rid] = None
            if len(self._finished) > _FINISHED_KEPT:
                self._finished.popitem(last=False)
            r.actual = actual
            if actual is not None:
                self._writer.add(
                    Charge(
                        reservation_id=rid,
                        tenant=r.tenant,
                        persona=r.persona,
                        model_id=model_id,
                        occurred_at=r.at,
                        settled_at=self._clock(),
                        tokens=actual.tokens,
                        cost_usd=cost_usd,
                        gpu_ms=gpu_ms,
                        counters=r.keys,
                    )
                )
            if r.allotment is not None:  # funded by an allotment: owed there, Redis not told
                r.allotment.give_back(r.amounts, actual)
                if r.allotment.closable:
                    self._close_allotment(r.allotment)
                return
            if r.keys and (r.held or actual is not None):
                if wait:
                    await self._tell_redis(rid, r)
                else:
                    # Queued now, inside the gate, ahead of any later command on the
                    # counters; it leaves with this process's next Redis command or within
                    # the counters' deferral (budget_settle_defer_ms), its reply awaited in the
                    # background (until then the id is what a rebuild counts as finished
                    # here, Redis not told yet).
                    self._unsettled[rid] = r
                    self._spawn(self._tell_later(rid, r, self._send_redis(rid, r, deferred=True)))

    async def _tell_later(self, rid: str, r: Hold, sent: Awaitable[SettleStatus]) -> None:
        try:
            await self._tell_redis(rid, r, sent)
        except Exception:  # a bug; the retry loop still has the settle queued
            log.exception("budget %s of %s: background settle failed", rid, r.tenant)

    def _send_redis(self, rid: str, r: Hold, *, deferred: bool = False) -> Awaitable[SettleStatus]:
        if r.actual is None:
            return self._counters.release(r.tenant, rid, r.keys, deferred=deferred)
        return self._counters.settle(
            r.tenant, rid, r.keys, r.actual, deferred=deferred, per_counter=r.per_counter
        )

    async def _tell_redis(
        self, rid: str, r: Hold, sent: Awaitable[SettleStatus] | None = None
    ) -> None:
        try:
            await (sent if sent is not None else self._send_redis(rid, r))
        except BudgetUnavailable as exc:
            log.warning("budget %s of %s kept for a retry: %s", rid, r.tenant, exc)
            self._unsettled[rid] = r
        else:
            self._unsettled.pop(rid, None)

    def _window(self, budget: Budget, at: datetime) -> Window:
        """``window_of``, reusing the last window of the same kind and zone while it holds."""
        cache_key = (budget.window, budget.timezone)
        window = self._windows.get(cache_key)
        if window is None or not window.start <= at < window.end:
            window = self._windows[cache_key] = window_of(budget, at)
        return window

    def _start_maintenance(self) -> None:
        if self._maintenance is None:
            loop = asyncio.get_running_loop()
            self._maintenance = loop.create_task(self._maintain(), name="budget-maintenance")

    async def _maintain(self) -> None:
        """Retry settles Redis missed; forget holds long past their deadline."""
        while True:
            await asyncio.sleep(self._retry_interval_s)
            for rid, r in list(self._unsettled.items()):
                try:
                    async with self._gate.shared(r.tenant):
                        if rid in self._unsettled:
                            await self._tell_redis(rid, r)
                except Exception:  # keep retrying the others; this one stays queued
                    log.exception("budget %s of %s: retry failed", rid, r.tenant)
            now_ms = time.time() * 1000
            for rid, r in list(self._open.items()):
                keep_ms = (_KEEP_EXPIRED_S if r.held else _KEEP_REFUSED_S) * 1000
                if r.deadline_ms + keep_ms < now_ms:
                    if r.held:
                        log.warning("forgetting reservation %s: never settled or released", rid)
                    del self._open[rid]
                    self._allotted.pop(rid, None)  # its hold was reaped at its deadline
            now = time.monotonic()
            for key in [k for k, until in self._tight.items() if until <= now]:
                del self._tight[key]

    # -- counters --------------------------------------------------------------------------

    async def state(
        self, tenant: str, persona: str, at: datetime | None = None
    ) -> builtins.list[BudgetState]:
        """Every applicable budget's current window (missing counters rebuilt first)."""
        at = at or self._clock()
        specs = [(b, self._window(b, at)) for b in await self.applicable(tenant, persona)]
        return await self._states(tenant, specs)

    async def _states(self, tenant: str, specs: Sequence[Spec]) -> builtins.list[BudgetState]:
        keys = [counter_key(tenant, b.budget_id, w.key) for b, w in specs]
        values = await self._counters.read(keys)
        if any(v is None for v in values):
            await self._rebuild(tenant, specs)
            values = await self._counters.read(keys)
        found = [v for v in values if v is not None]
        if len(found) < len(values):
            raise BudgetUnavailable("budget counters vanished again right after their rebuild")
        return list(states_of(self._limits, specs, found))

    async def rebuild(self, tenant: str | None = None) -> RebuildReport:
        """Rebuild every missing counter of the current windows (of ``tenant``, or all), and
        of the windows this process still holds reservations in; report every counter."""
        at = self._clock()
        by_tenant: dict[str, builtins.list[Budget]] = {}
        for budget in await self._store.list(tenant):
            by_tenant.setdefault(budget.tenant, []).append(budget)
        reports: builtins.list[CounterReport] = []
        for name, budgets in by_tenant.items():
            specs = {counter_key(name, b.budget_id, window_of(b, at).key): b for b in budgets}
            found = [(b, window_of(b, at)) for b in budgets]
            for r in [*self._open.values(), *self._unsettled.values()]:
                for b in budgets:
                    if r.tenant == name and b.applies_to(name, r.persona):
                        window = window_of(b, r.at)
                        key = counter_key(name, b.budget_id, window.key)
                        if key in r.keys and key not in specs:
                            specs[key] = b
                            found.append((b, window))
            reports += await self._rebuild(name, found)
        return RebuildReport(tuple(reports))

    async def _rebuild(self, tenant: str, specs: Sequence[Spec]) -> builtins.list[CounterReport]:
        """Rebuild what is missing; concurrent callers wait for a tenant's rebuild in flight
        and start their own only when their counters are still missing after it."""
        keys = [counter_key(tenant, b.budget_id, w.key) for b, w in specs]
        while (running := self._rebuilding.get(tenant)) is not None:
            with contextlib.suppress(Exception):  # its caller sees its error; we try again
                await asyncio.shield(running)
            values = await self._counters.read(keys)
            if all(v is not None for v in values):
                return counter_reports(tenant, specs, keys, values, set())
        task = asyncio.get_running_loop().create_task(self._rebuild_exclusive(tenant, specs))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._rebuilding[tenant] = task
        try:
            return await asyncio.shield(task)
        finally:
            if self._rebuilding.get(tenant) is task:
                del self._rebuilding[tenant]

    async def _rebuild_exclusive(
        self, tenant: str, specs: Sequence[Spec]
    ) -> builtins.list[CounterReport]:
        async with self._gate.exclusive(tenant):
            return await self._rebuild_held(tenant, specs)

    async def _rebuild_held(
        self, tenant: str, specs: Sequence[Spec]
    ) -> builtins.list[CounterReport]:
        keys = [counter_key(tenant, b.budget_id, w.key) for b, w in specs]
        todo = [i for i, v in enumerate(await self._counters.read(keys)) if v is None]
        rebuilt: set[str] = set()
        if todo:
            counters = []
            async with self._writer.lock:  # no charge moves from pending to PostgreSQL now
                for i in todo:
                    budget, window = specs[i]
                    totals, _ = await self._window_totals(budget, window)
                    markers = tuple(rid for rid, r in self._unsettled.items() if keys[i] in r.keys)
                    # a day past its window, and a day past now for a window long over
                    expire = max(int(window.end.timestamp()), int(time.time()))
                    expire += _COUNTER_GRACE_S
                    counters.append(RebuildCounter(keys[i], totals.units, expire, markers))
            holds = []
            for rid, r in self._open.items():
                if r.tenant == tenant and r.held and r.allotment is None:
                    idx = tuple(j for j, i in enumerate(todo) if keys[i] in r.keys)
                    if idx:
                        holds.append(RebuildReservation(rid, r.deadline_ms, r.amounts, idx))
            flags = await self._counters.rebuild(tenant, counters, holds)
            rebuilt = {c.key for c, flag in zip(counters, flags, strict=True) if flag}
            self._forgive(tenant, rebuilt)  # the ledger they were rebuilt from has those
            log.info("budget counters of %s rebuilt: %d of %d", tenant, len(rebuilt), len(todo))
        return counter_reports(tenant, specs, keys, await self._counters.read(keys), rebuilt)

    async def _window_totals(
        self, budget: Budget, window: Window, *, pending: bool = True
    ) -> tuple[WindowTotals, datetime | None]:
        """Charges counted by ``budget``'s counter of ``window``: settled after the window's
        last reset (returned too), from PostgreSQL plus (with ``pending``) this process's
        unwritten ones."""
        last = await self._store.last_reset(budget.budget_id, window.key)
        since = last.reset_at if last is not None else None
        totals = await self._store.window_charges(
            tenant=budget.tenant,
            persona=budget.persona,
            start=window.start,
            end=window.end,
            since=since,
        )
        if pending:
            mine = self._writer.pending(budget.tenant)
            totals += WindowTotals.of([c for c in mine if c.counts_for(budget, window, since)])
        return totals, since

    # -- reset and summary ------------------------------------------------------------------

    async def reset(
        self, budget_id: str, *, actor: str, reason: str, at: datetime | None = None
    ) -> ResetRecord:
        """Clear the spend of ``budget_id``'s window containing ``at`` (reservations stay).

        The audit row (with the exact spend before) is written first; then the counter's
        spent units are set to 0. Later rebuilds count only charges settled after it.
        """
        ResetRecord(  # validate actor and reason before touching anything
            budget_id=budget_id,
            tenant="-",
            window_key="-",
            reset_at=self._clock(),
            actor=actor,
            reason=reason,
            spent_before_tokens=0,
            spent_before_usd=Decimal(0),
            spent_before_gpu_ms=Decimal(0),
        )
        budget = await self._store.get(budget_id)
        window = window_of(budget, at or self._clock())
        key = counter_key(budget.tenant, budget.budget_id, window.key)
        async with self._gate.exclusive(budget.tenant):
            await self._rebuild_held(budget.tenant, [(budget, window)])
            await self._writer.flush()
            before, _ = await self._window_totals(budget, window, pending=False)
            record = await self._store.record_reset(
                ResetRecord(
                    budget_id=budget.budget_id,
                    tenant=budget.tenant,
                    window_key=window.key,
                    reset_at=self._clock(),
                    actor=actor,
                    reason=reason,
                    spent_before_tokens=before.tokens,
                    spent_before_usd=before.cost_usd,
                    spent_before_gpu_ms=before.gpu_ms,
                )
            )
            if await self._counters.reset(key) is None:  # lost since: rebuild it post-reset
                await self._rebuild_held(budget.tenant, [(budget, window)])
            else:
                self._forgive(budget.tenant, {key})  # what its allotments owe was spent before
        log.info("budget %s window %s reset by %s: %s", budget_id, window.key, actor, reason)
        return record

    async def summary(
        self, tenant: str, at: datetime | None = None
    ) -> builtins.list[BudgetSummary]:
        """Every budget of ``tenant`` in its current window: limits, spend (exact from the
        ledger when PostgreSQL answers, else the counter's units), holds, what remains, the
        burn rate since the window started (or was reset) and when it would run out."""
        at = at or self._clock()
        budgets = await self._store.list(tenant)
        specs = [(b, window_of(b, at)) for b in budgets]
        states = await self._states(tenant, specs)
        summaries = []
        for state in states:
            exact: WindowTotals | None
            try:
                exact, since = await self._window_totals(state.budget, state.window)
            except BudgetUnavailable:
                exact, since = None, None
            summaries.append(summarize(state, exact, since, at))
        return summaries

    async def aclose(self) -> None:
        """Stop background work, tell Redis what it missed if it answers, write every
        pending charge (raises ``BudgetUnavailable`` when PostgreSQL cannot take them)."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        for allot in list(self._allotted.values()):
            allot.draining = True
            if allot.inflight == 0:
                self._close_allotment(allot)
        await asyncio.gather(*self._telling, return_exceptions=True)
        for rid, r in list(self._unsettled.items()):
            await self._tell_redis(rid, r)
        await self._writer.aclose()
