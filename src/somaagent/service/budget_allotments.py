"""Allotments: a slice of a tenant's budgets held in Redis, from which calls reserve locally.

A per-call reservation costs a Redis round trip before the call and a script after it. With
allotments (``BudgetService(allotment_calls=N)``), the first call of a tenant and counter
set reserves ``k`` times its worst case under an id of its own (``allot:<hex>``), with the
ordinary reserve script. ``k`` is ``N``, or fewer so that no limited dimension holds more
than 1/``ALLOTMENT_SHARE`` of its limit. Every other replica sees that hold at once, so
the budget holds across replicas as before.

* Later calls whose worst case fits in what the allotment has left are reserved against it
  in memory. Their settle records the exact charge in the ledger, as always, and adds the
  units to what the allotment owes each counter.
* An allotment funds calls for ``rotate_s`` after it opens, and never a call whose own
  deadline would pass the allotment's. Then, or as soon as a call does not fit, it drains.
  When half of it is used or three quarters of that time have passed, the next one opens
  in the background and waits as the spare, so calls do not wait for it: it takes over
  when the current one cannot fund a call.
* Once its last call has settled, one settle script releases the hold and adds to each
  counter's spent what the allotment owes it.
* Near a limit the allotment does not fit. Calls then go back to per-call reservations for
  ``rotate_s``, so refusals are as exact as before.

What it changes:

* A counter shows the whole allotment as reserved from its open to its close, and spent
  rises at the close. ``reserved + spent`` never drops below what the calls may still use.
* A process that dies with an allotment open leaves its hold to the reaper: past its
  deadline the reserve script turns the whole hold into spent, since what its calls used
  never reached the counter and is at most the hold. The counter then errs high by the
  part its calls did not use, until the window ends or is reset; the ledger stays exact.

This module is pure bookkeeping; ``BudgetService`` does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from somaagent.adapters.redis_budget import CounterValues
from somaagent.domain.budgets import Amounts, Budget, Limits, Window

__all__ = [
    "ALLOTMENT_PREFIX",
    "ALLOTMENT_SHARE",
    "Allotment",
    "AllotmentAsk",
    "AllotmentKey",
    "allotment_size",
]

ALLOTMENT_PREFIX = "allot:"
ALLOTMENT_SHARE = 16  # an allotment holds at most 1/16 of any limit it is under
MARGIN_MS = 1_000  # a funded call's deadline stays this far inside its allotment's
AllotmentKey = tuple[str, tuple[str, ...]]  # tenant, counter keys


class AllotmentAsk(NamedTuple):
    """The call an allotment is opened for: its counters' key, persona, time, worst case,
    limits (per counter key), hold in ms and budgets (in the counters' order)."""

    key: AllotmentKey
    persona: str
    at: datetime
    worst: Amounts
    limits: Sequence[tuple[str, Limits]]
    lifetime_ms: int
    specs: Sequence[tuple[Budget, Window]]


def allotment_size(worst: Amounts, calls: int, limits: Sequence[Limits]) -> Amounts | None:
    """``k`` times ``worst``: ``k`` is ``calls``, or fewer so that no limited dimension holds
    more than 1/ALLOTMENT_SHARE of its smallest limit; ``None`` when ``k`` would be below 2
    (then per-call reservations are no worse than an allotment)."""
    k = calls
    for lim in limits:
        for w, cap in zip(worst.as_tuple(), (lim.tokens, lim.usd_nano, lim.gpu_us), strict=True):
            if cap is not None and w > 0:
                k = min(k, cap // ALLOTMENT_SHARE // w)
    if k < 2:
        return None
    return Amounts(worst.tokens * k, worst.usd_nano * k, worst.gpu_us * k)


@dataclass(slots=True, eq=False)
class Allotment:
    """One open allotment (see the module docstring). Times are ``time.monotonic()``."""

    reservation_id: str
    tenant: str
    keys: tuple[str, ...]
    amounts: Amounts  # held in Redis on every counter of ``keys``
    opened: float
    funds_until: float
    lifetime_ms: int
    snapshot: tuple[CounterValues, ...]  # the counters as its reserve script found them
    held: Amounts = Amounts()  # worst cases of the funded calls in flight
    settled: Amounts = Amounts()  # what the settled calls used
    owed: list[Amounts] = field(default_factory=list)  # per key: what its spent gets
    inflight: int = 0
    draining: bool = False

    def __post_init__(self) -> None:
        if not self.owed:
            self.owed = [Amounts() for _ in self.keys]

    def fits(self, worst: Amounts, lifetime_ms: int, now: float) -> bool:
        """Whether a call of ``worst`` held for ``lifetime_ms`` may be funded now."""
        if self.draining or now >= self.funds_until:
            return False
        if (now - self.opened) * 1000 + lifetime_ms + MARGIN_MS > self.lifetime_ms:
            return False
        a, u = self.amounts, self.held + self.settled + worst
        return u.tokens <= a.tokens and u.usd_nano <= a.usd_nano and u.gpu_us <= a.gpu_us

    def low(self, now: float) -> bool:
        """Half of it used, or three quarters of its funding time gone: time to open the
        next one (``BudgetService`` does, without waiting for it)."""
        if now >= self.opened + 0.75 * (self.funds_until - self.opened):
            return True
        a, u = self.amounts, self.held + self.settled
        return (
            2 * u.tokens >= a.tokens > 0
            or 2 * u.usd_nano >= a.usd_nano > 0
            or 2 * u.gpu_us >= a.gpu_us > 0
        )

    def values(self) -> tuple[CounterValues, ...]:
        """The counters as a per-call reservation would find them now (as far as this
        process knows): the settled calls spent, the calls in flight held."""
        return tuple(
            CounterValues(v.spent + self.settled, v.reserved + self.held) for v in self.snapshot
        )

    def take(self, worst: Amounts) -> None:
        self.held = self.held + worst
        self.inflight += 1

    def give_back(self, worst: Amounts, actual: Amounts | None) -> None:
        """A funded call ended: its hold returns, what it used (if anything) is owed."""
        self.held = self.held - worst
        self.inflight -= 1
        if actual is not None:
            self.settled = self.settled + actual
            self.owed = [o + actual for o in self.owed]

    def forgive(self, keys: set[str]) -> None:
        """The counters ``keys`` were rebuilt from the ledger (which has these charges) or
        reset (which cleared them): they are owed nothing so far."""
        pairs = zip(self.keys, self.owed, strict=True)
        self.owed = [Amounts() if k in keys else o for k, o in pairs]

    @property
    def closable(self) -> bool:
        return self.draining and self.inflight == 0
