"""Budget counters in Redis: one Lua script per operation, every key hash-tagged by tenant.

Scripts (package data, ``adapters/lua/budget_*.lua``) run through EVALSHA (loaded again
after a ``SCRIPT FLUSH`` or a restart). All numbers cross into Lua as decimal strings of
integers below 2**53 and come back as integer replies, so no unit is ever rounded there.
Every key of one tenant carries the hash tag ``{tenant}`` (see ``domain.budgets``), so a
script only ever touches one Redis Cluster slot; the reaper and the rebuild address
reservation hashes they derive from the tenant's prefix, which lie in the same slot.

The server must not evict these keys (``maxmemory-policy noeviction``, the default): a
single lost key is not something the rebuild can tell apart from a flushed database.
Connection and timeout errors raise ``BudgetUnavailable``; script errors are bugs and
propagate as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis

from somaagent.adapters.resp import RespClient, Script, unavailable_as
from somaagent.domain.budgets import (
    DIMENSIONS,
    Amounts,
    BudgetUnavailable,
    Dimension,
    Limits,
    done_key,
    reservation_key,
    reservations_key,
)

__all__ = [
    "CounterValues",
    "RebuildCounter",
    "RebuildReservation",
    "RedisBudgetCounters",
    "ReserveResult",
    "SettleStatus",
]

T = TypeVar("T")
SettleStatus = Literal["settled", "gone", "duplicate"]
_SETTLE_STATUS: dict[int, SettleStatus] = {0: "duplicate", 1: "settled", 2: "gone"}
_FIELDS = ("st", "sn", "su", "rt", "rn", "ru")


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """What the reserve script did.

    ``reserved``: held on every counter until ``deadline_ms`` (Redis clock, Unix ms).
    ``duplicate``: the id is in use or was settled recently; nothing changed.
    ``missing``: the counters at ``missing`` (0-based) do not exist; nothing changed.
    ``exceeded``: ``(counter index, dimension, remaining units)`` for every limit the
    amounts would pass; nothing changed.
    ``values`` (``reserved`` and ``exceeded``): every counter as the script read it, before
    this reservation's hold, in the order of the counters passed.
    """

    status: Literal["reserved", "duplicate", "missing", "exceeded"]
    deadline_ms: int | None = None
    missing: tuple[int, ...] = ()
    exceeded: tuple[tuple[int, Dimension, int], ...] = ()
    values: tuple[CounterValues, ...] = ()


@dataclass(frozen=True, slots=True)
class CounterValues:
    """One counter: units spent and units held by open reservations."""

    spent: Amounts
    reserved: Amounts


@dataclass(frozen=True, slots=True)
class RebuildCounter:
    """A counter to write if it is missing: its spent units, its expiry (Unix s) and the ids
    of charges it counts whose settle script has not run yet (``x:<id>`` markers)."""

    key: str
    spent: Amounts
    expire_at_s: int
    markers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RebuildReservation:
    """An open reservation of the rebuilding process, held on counters ``indexes`` (0-based
    into the rebuild's counter list)."""

    reservation_id: str
    deadline_ms: int
    amounts: Amounts
    indexes: tuple[int, ...]


def _limit(value: int | None) -> str:
    return "-1" if value is None else str(value)


def _ints(amounts: Amounts) -> list[str]:
    return [str(v) for v in amounts.as_tuple()]


def _values(reply: list[Any], start: int, count: int) -> tuple[CounterValues, ...]:
    """``count`` counters' six fields from ``reply[start:]`` (see ``budget_reserve.lua``)."""
    if len(reply) != start + 6 * count:
        raise ValueError(f"reserve script replied {len(reply)} items, expected {start + 6 * count}")
    out = []
    for i in range(start, start + 6 * count, 6):
        n = [int(v) for v in reply[i : i + 6]]
        out.append(CounterValues(Amounts(n[0], n[1], n[2]), Amounts(n[3], n[4], n[5])))
    return tuple(out)


def _words(amounts: Amounts) -> str:
    return f"{amounts.tokens} {amounts.usd_nano} {amounts.gpu_us}"


class RedisBudgetCounters:
    """The Redis side of budgets (see the module docstring). Connects on first use."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        reap_limit: int = 100,
        done_ttl_s: int = 600,
        reservation_grace_s: int = 40 * 86_400,
        defer_s: float = 0.002,
    ) -> None:
        # One auto-pipelined connection (adapters.resp): concurrent calls share its round
        # trips; redis-py's pool and parser layers cost several times more per call.
        # ``defer_s``: how long a deferred settle or release may wait for company.
        self._url = url
        self._defer_s = defer_s
        self._timeout_s = timeout_s
        self._resp = RespClient(url, timeout_s=timeout_s)
        self._inspect: aioredis.Redis | None = None
        self._grace_s = reservation_grace_s
        self._reap_limit_arg = str(reap_limit)
        self._done_ttl_arg = str(done_ttl_s)
        self._grace_arg = str(reservation_grace_s)
        self._reserve = Script.packaged("budget_reserve.lua")
        self._settle = Script.packaged("budget_settle.lua")
        self._release = Script.packaged("budget_release.lua")
        self._rebuild = Script.packaged("budget_rebuild.lua")
        self._reset = Script.packaged("budget_reset.lua")

    @property
    def client(self) -> aioredis.Redis:
        """A redis-py client on the same server (tests and the benchmark inspect keys with
        it; the budget operations themselves never use it)."""
        if self._inspect is None:
            self._inspect = aioredis.Redis.from_url(
                self._url, decode_responses=True, socket_timeout=self._timeout_s
            )
        return self._inspect

    @staticmethod
    def _call(work: Awaitable[T]) -> Awaitable[T]:
        return unavailable_as(work, BudgetUnavailable)

    def _run(self, script: Script, keys: list[str], args: list[str]) -> Awaitable[Any]:
        return self._resp.run_script(script, keys, args)

    @staticmethod
    def _prefix(tenant: str) -> str:
        return reservation_key(tenant, "")

    def _tenant_keys(self, tenant: str, reservation_id: str) -> list[str]:
        return [
            reservations_key(tenant),
            reservation_key(tenant, reservation_id),
            done_key(tenant, reservation_id),
        ]

    async def reserve(
        self,
        tenant: str,
        reservation_id: str,
        counters: Sequence[tuple[str, Limits]],
        amounts: Amounts,
        lifetime_ms: int,
    ) -> ReserveResult:
        """Hold ``amounts`` on every counter for ``lifetime_ms``, or on none of them.

        Reaps up to ``reap_limit`` expired reservations of the tenant first (an expired
        allotment's hold becomes spent: see ``budget_reserve.lua``).
        """
        keys = self._tenant_keys(tenant, reservation_id) + [key for key, _ in counters]
        limits = " ".join(
            f"{_limit(lim.tokens)} {_limit(lim.usd_nano)} {_limit(lim.gpu_us)}"
            for _, lim in counters
        )
        args = [reservation_id, str(lifetime_ms), _words(amounts), self._prefix(tenant)]
        args += [self._reap_limit_arg, self._grace_arg, limits]
        args += [done_key(tenant, ""), self._done_ttl_arg]  # reaped allotments' markers
        reply: list[Any] = await self._call(self._run(self._reserve, keys, args))
        status = reply[0]
        if status == 1:
            return ReserveResult(
                "reserved", deadline_ms=int(reply[1]), values=_values(reply, 2, len(counters))
            )
        if status == 2:
            return ReserveResult("duplicate")
        if status == 3:
            return ReserveResult("missing", missing=tuple(int(i) - 1 for i in reply[1:]))
        end = 2 + 3 * int(reply[1])
        triples = [reply[i : i + 3] for i in range(2, end, 3)]
        exceeded = tuple((int(i) - 1, DIMENSIONS[int(d) - 1], int(r)) for i, d, r in triples)
        return ReserveResult(
            "exceeded", exceeded=exceeded, values=_values(reply, end, len(counters))
        )

    def settle(
        self,
        tenant: str,
        reservation_id: str,
        counters: Sequence[str],
        actual: Amounts,
        *,
        deferred: bool = False,
        per_counter: Sequence[Amounts] | None = None,
    ) -> Awaitable[SettleStatus]:
        """Free the reservation's held units and add ``actual`` to spent (see the script).

        Like ``release``, the command is queued on the connection when this is called (see
        ``RespClient.submit_script``); awaiting gives its status. ``deferred``: it may wait
        up to ``defer_s`` to leave with this process's next command. ``per_counter`` (an
        allotment's close): the units each counter's spent gets instead of ``actual``.
        """
        keys = self._tenant_keys(tenant, reservation_id) + list(counters)
        args = [reservation_id, _words(actual), self._done_ttl_arg]
        if per_counter is not None:
            if len(per_counter) != len(counters):
                raise ValueError("per_counter needs one amount per counter")
            args += [_words(a) for a in per_counter]
        defer_s = self._defer_s if deferred else 0.0
        return self._status(self._resp.submit_script(self._settle, keys, args, defer_s=defer_s))

    def release(
        self, tenant: str, reservation_id: str, counters: Sequence[str], *, deferred: bool = False
    ) -> Awaitable[SettleStatus]:
        """Free the reservation's held units; nothing is spent."""
        keys = self._tenant_keys(tenant, reservation_id) + list(counters)
        args = [reservation_id, self._done_ttl_arg]
        defer_s = self._defer_s if deferred else 0.0
        return self._status(self._resp.submit_script(self._release, keys, args, defer_s=defer_s))

    async def _status(self, work: Awaitable[list[int]]) -> SettleStatus:
        reply = await self._call(work)
        return _SETTLE_STATUS[int(reply[0])]

    async def rebuild(
        self,
        tenant: str,
        counters: Sequence[RebuildCounter],
        reservations: Sequence[RebuildReservation],
    ) -> list[bool]:
        """Write each counter that is still missing; ``True`` for those written now.

        The reservations are added to the counters written now and their hashes restored
        (holding exactly those counters) unless they have expired on the Redis clock.
        """
        keys = [reservations_key(tenant)] + [c.key for c in counters]
        keys += [reservation_key(tenant, r.reservation_id) for r in reservations]
        args: list[str] = [str(len(counters)), str(len(reservations)), str(self._grace_s)]
        for c in counters:
            args += [*_ints(c.spent), str(c.expire_at_s), str(len(c.markers)), *c.markers]
        for r in reservations:
            args += [r.reservation_id, str(r.deadline_ms), *_ints(r.amounts)]
            args += [str(len(r.indexes)), *(str(i + 1) for i in r.indexes)]
        reply: list[int] = await self._call(self._run(self._rebuild, keys, args))
        return [bool(flag) for flag in reply]

    async def reset(self, key: str) -> Amounts | None:
        """Set the counter's spent units to 0 (reserved kept); the spent units it had, or
        ``None`` when the counter is missing (nothing changed)."""
        reply: list[int] = await self._call(self._run(self._reset, [key], []))
        if reply[0] == 0:
            return None
        return Amounts(int(reply[1]), int(reply[2]), int(reply[3]))

    async def read(self, keys: Sequence[str]) -> list[CounterValues | None]:
        """The counters' values, ``None`` for a missing one (one round trip)."""
        if not keys:
            return []

        # A counter is only ever created whole (the rebuild script writes all six fields),
        # so HMGET alone tells a missing counter: every field is nil.
        commands: list[tuple[Any, ...]] = [("HMGET", key, *_FIELDS) for key in keys]
        replies = await self._call(self._resp.many(commands))
        values: list[CounterValues | None] = []
        for fields in replies:
            if fields[0] is None:
                values.append(None)
                continue
            n = [int(v) if v is not None else 0 for v in fields]
            values.append(CounterValues(Amounts(*n[:3]), Amounts(*n[3:])))
        return values

    async def aclose(self) -> None:
        """Close the connection (and the inspection client, if one was made)."""
        await self._resp.aclose()
        if self._inspect is not None:
            await self._inspect.aclose()
