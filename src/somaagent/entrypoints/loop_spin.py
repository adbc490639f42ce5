"""Keep the gateway's event loop polling, not sleeping, for a short while after it worked.

A call at low concurrency sleeps several times (for the request, for Redis, for the
upstream, for the next request), each wait a fraction of a millisecond. On a virtual CPU
every such sleep halts the vCPU, and waking it costs a hypervisor exit, an interrupt and a
cold cache: at one request at a time that was about a third of a call's wall time here (see
docs/decisions.md, "session 14"). While ``window_s`` has not passed since the loop last did
any work, a callback re-schedules itself, so the loop polls its sockets with a zero timeout
instead of blocking. Work is noticed without touching the hot path: when the loop's thread
used more than ``work_cpu_s`` of CPU between two ticks, other callbacks ran in between.
(CPU time, not wall time: a tick that comes late because the thread was preempted or waited
for the GIL is not work, or spinners sharing a core would keep each other spinning.) After
the window the loop blocks as before; the next request (``wake``) starts polling again.

The cost is CPU: up to ``window_s`` of one core after each burst of work, none once the
loop is idle. The gateway is meant to have its core to itself; where it shares one with a
model server or runs under a CPU quota, set the window to 0 (no polling).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["LoopSpinner"]


class LoopSpinner:
    """Polls the running loop for ``window_s`` after its last work; see the module doc."""

    def __init__(
        self,
        window_s: float,
        *,
        work_cpu_s: float = 30e-6,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive (0 means: do not create a spinner)")
        self.window_s = window_s
        self.work_cpu_s = work_cpu_s
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.spinning = False
        self.ticks = 0
        self._last_work = 0.0
        self._prev_cpu = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Work arrived (a request): poll from now on if the loop was allowed to sleep."""
        if self.spinning:
            return
        loop = asyncio.get_running_loop()
        self._last_work = self.clock()
        self._prev_cpu = self.cpu_clock()
        self._loop = loop
        self.spinning = True
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        now = self.clock()
        cpu = self.cpu_clock()
        self.ticks += 1
        if cpu - self._prev_cpu > self.work_cpu_s:
            self._last_work = now  # the loop ran other callbacks since the previous tick
        self._prev_cpu = cpu
        loop = self._loop
        if now - self._last_work < self.window_s and loop is not None and not loop.is_closed():
            loop.call_soon(self._tick)
        else:
            self.spinning = False
