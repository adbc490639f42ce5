"""How many calls this process has in flight to one upstream model, and who waits for room.

A model with ``concurrency`` in the catalog gets an :class:`UpstreamSlots`: ``max_in_flight``
calls at a time; up to ``max_queued`` more wait in arrival order, at most ``max_wait_ms``
each (and never past the call's own deadline). A freed slot goes straight to the first
waiter, so a newcomer never overtakes the queue. A call that finds the queue full, or waits
its longest, is *shed*: the router moves on to the next candidate model. A waiter whose
request is cancelled leaves the queue, and a slot handed to it just as it was cancelled is
passed on, so no slot is ever lost.

The limit is per gateway process: with N replicas in front of one server, give each
``max_in_flight`` of the server's slots divided by N.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from somaagent.domain.routing import Concurrency

__all__ = ["Shed", "ShedReason", "Slot", "SlotsSnapshot", "UpstreamSlots"]

ShedReason = Literal["queue_full", "queue_timeout", "client_left"]
# How often a waiting call checks whether its client is still there.
LEFT_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Shed:
    """A call that found no room: why, and how long it waited (ms)."""

    reason: ShedReason
    waited_ms: float


@dataclass(frozen=True, slots=True)
class SlotsSnapshot:
    """What one model's slots look like now (for metrics)."""

    limit: int
    in_flight: int
    queued: int
    shed_full: int  # calls shed since start because the queue was full
    shed_timeout: int  # ... because they waited their longest
    waited_s: float  # total time calls spent queued, shed or not


class Quota(Protocol):
    """A hold on a model's rate limits (``rate_limits.RateHold``)."""

    def settle(self, tokens: int) -> None: ...


class Slot:
    """One call's place on an upstream (``owner`` None: one without a limit); ``release``
    once the upstream request is over (again: a no-op). ``quota``: its hold on the model's
    rate limits, if the model has some, which ``settle`` gives the tokens the call used."""

    __slots__ = ("_owner", "quota", "waited_ms")

    def __init__(self, owner: UpstreamSlots | None, waited_ms: float) -> None:
        self._owner: UpstreamSlots | None = owner
        self.waited_ms = waited_ms
        self.quota: Quota | None = None

    def settle(self, tokens: int) -> None:
        """The attempt is accounted: its quota hold becomes the ``tokens`` it used."""
        if self.quota is not None:
            self.quota.settle(tokens)

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._give_back()


class UpstreamSlots:
    """The slots of one upstream model in this process (one event loop)."""

    def __init__(self, limits: Concurrency) -> None:
        self.limits = limits
        self._free = limits.max_in_flight
        self._waiters: deque[asyncio.Future[ShedReason | None]] = deque()
        self._shed_full = 0
        self._shed_timeout = 0
        self._waited_s = 0.0

    def snapshot(self) -> SlotsSnapshot:
        return SlotsSnapshot(
            limit=self.limits.max_in_flight,
            in_flight=self.limits.max_in_flight - self._free,
            queued=len(self._waiters),
            shed_full=self._shed_full,
            shed_timeout=self._shed_timeout,
            waited_s=self._waited_s,
        )

    def has_room(self) -> bool:
        """Whether a call would get a slot at once."""
        return self._free > 0 and not self._waiters

    def try_take(self) -> Slot | None:
        """A slot now, without waiting, if one is free and nobody waits for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return Slot(self, 0.0)
        return None

    async def take(self, deadline_s: float, gone: Callable[[], bool] | None = None) -> Slot | Shed:
        """A slot, waiting in line for at most ``max_wait_ms`` and ``deadline_s``; a
        :class:`Shed` when the queue is full or the wait ran out, or (``client_left``) when
        ``gone`` says the client left meanwhile (checked every ``LEFT_POLL_S``)."""
        slot = self.try_take()
        if slot is not None:
            return slot
        if len(self._waiters) >= self.limits.max_queued:
            self._shed_full += 1
            return Shed("queue_full", 0.0)
        wait_s = min(self.limits.max_wait_ms / 1000, deadline_s)
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[ShedReason | None] = loop.create_future()
        self._waiters.append(granted)
        timer = loop.call_later(wait_s, _shed, granted, "queue_timeout")
        watch = _Watch(loop, granted, gone) if gone is not None else None
        started = time.perf_counter()
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled() and granted.result() is None:
                self._give_back()  # handed a slot just as the request was cancelled
            else:
                self._forget(granted)
            raise
        finally:
            timer.cancel()
            if watch is not None:
                watch.stop()
            self._waited_s += time.perf_counter() - started
        waited_ms = (time.perf_counter() - started) * 1000
        reason = granted.result()
        if reason is None:
            return Slot(self, waited_ms)
        self._forget(granted)
        if reason == "queue_timeout":
            self._shed_timeout += 1
        return Shed(reason, waited_ms)

    def _give_back(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it directly
                return
        self._free += 1

    def _forget(self, waiter: asyncio.Future[ShedReason | None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # already handed over (and given back) or timed out and removed


def _shed(waiter: asyncio.Future[ShedReason | None], reason: ShedReason) -> None:
    if not waiter.done():
        waiter.set_result(reason)


class _Watch:
    """Ends a wait with ``client_left`` once ``gone()`` is true (polled: the request's
    own task is not told when its client leaves, only its flag is set)."""

    __slots__ = ("_gone", "_handle", "_loop", "_waiter")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[ShedReason | None],
        gone: Callable[[], bool],
    ) -> None:
        self._loop, self._waiter, self._gone = loop, waiter, gone
        self._handle = loop.call_later(LEFT_POLL_S, self._check)

    def _check(self) -> None:
        if self._waiter.done():
            return
        if self._gone():
            self._waiter.set_result("client_left")
        else:
            self._handle = self._loop.call_later(LEFT_POLL_S, self._check)

    def stop(self) -> None:
        self._handle.cancel()
