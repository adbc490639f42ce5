"""What ``BudgetService`` returns and keeps per reservation (split from ``budgets``)."""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from somaagent.adapters.redis_budget import CounterValues
from somaagent.domain.budgets import (
    Amounts,
    Budget,
    BudgetError,
    BudgetState,
    Dimension,
    Limits,
    Window,
)
from somaagent.service.budget_allotments import Allotment

__all__ = [
    "CounterReport",
    "Exceeded",
    "Hold",
    "RebuildReport",
    "ReserveOutcome",
    "Spec",
    "UnknownReservation",
    "check_reservation_id",
    "counter_reports",
    "limits_of",
    "states_of",
    "utc_now",
]

_RESERVATION_ID_RE = re.compile(r"[!-~]{1,128}")
Spec = tuple[Budget, Window]


class UnknownReservation(BudgetError):
    """``settle``/``release`` of an id this process never reserved (or forgot long ago)."""


@dataclass(frozen=True, slots=True)
class Exceeded:
    """One limit a reservation would pass: units of ``dimension`` (tokens, nano-USD, GPU us)."""

    budget: Budget
    window: Window
    dimension: Dimension
    limit: int
    requested: int
    remaining: int


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """``ok``: held on every budget in ``budgets`` until ``deadline_ms`` (Unix ms, Redis
    clock; ``None`` when no budget applies). Otherwise nothing is held and ``exceeded``
    names why; the id still accepts ``settle`` (a caller that runs the call anyway, in a
    permissive mode, still has its spend counted) and ``release``. Truthy when ``ok``.
    ``states``: each budget's counter as the reservation found it (before its own hold),
    read in the same atomic script, so no separate ``state`` read is needed."""

    ok: bool
    reservation_id: str
    budgets: tuple[Budget, ...]
    exceeded: tuple[Exceeded, ...] = ()
    deadline_ms: int | None = None
    states: tuple[BudgetState, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class CounterReport:
    budget_id: str
    tenant: str
    window_key: str
    key: str
    rebuilt: bool  # False: the counter existed and was left alone
    spent: Amounts
    reserved: Amounts


@dataclass(frozen=True, slots=True)
class RebuildReport:
    counters: tuple[CounterReport, ...]

    @property
    def rebuilt(self) -> int:
        return sum(c.rebuilt for c in self.counters)


@dataclass(slots=True)
class Hold:
    """What this process remembers of a reservation until it is settled or released."""

    tenant: str
    persona: str
    at: datetime
    amounts: Amounts
    keys: tuple[str, ...]
    deadline_ms: int
    held: bool = True  # False: refused, nothing held in Redis (a settle still counts)
    actual: Amounts | None = None  # set once settled; None for a release
    allotment: Allotment | None = None  # a call funded by it: Redis is not told
    per_counter: tuple[Amounts, ...] | None = None  # an allotment's close: owed per counter


def limits_of(cache: dict[Budget, Limits], budget: Budget) -> Limits:
    limits = cache.get(budget)
    if limits is None:
        limits = cache[budget] = budget.limits()
    return limits


def states_of(
    cache: dict[Budget, Limits], specs: Sequence[Spec], values: Sequence[CounterValues]
) -> tuple[BudgetState, ...]:
    """The budgets' states from their counters' values (in spec order)."""
    return tuple(
        BudgetState(budget, window, limits_of(cache, budget), value.spent, value.reserved)
        for (budget, window), value in zip(specs, values, strict=True)
    )


def counter_reports(
    tenant: str,
    specs: Sequence[Spec],
    keys: Sequence[str],
    values: Sequence[CounterValues | None],
    rebuilt: set[str],
) -> builtins.list[CounterReport]:
    return [
        CounterReport(
            b.budget_id,
            tenant,
            w.key,
            key,
            key in rebuilt,
            v.spent if v else Amounts(),
            v.reserved if v else Amounts(),
        )
        for (b, w), key, v in zip(specs, keys, values, strict=True)
    ]


def utc_now() -> datetime:
    return datetime.now(UTC)


def check_reservation_id(rid: str) -> None:
    if not isinstance(rid, str) or not _RESERVATION_ID_RE.fullmatch(rid):
        raise BudgetError("reservation_id must be 1-128 printable ASCII characters, no spaces")
