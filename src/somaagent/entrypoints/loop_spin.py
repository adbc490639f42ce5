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
for the GIL is not work, or spinners sharing a core would keep each other spinning. And
100 µs, not less: a bare tick costs about 6 µs, but on a noisy virtual host one in 200
reads 30-60 µs, interrupts and stolen time charged to the thread; with 30 µs such a tick
came about every 1.2 ms and a 2 ms window never closed. A request's work between two ticks
is hundreds of µs.) After
the window the loop blocks as before; the next request (``wake``) starts polling again.

The cost is CPU: up to ``window_s`` of one core after each burst of work, none once the
loop is idle. The gateway is meant to have its core to itself; where it shares one with a
model server or runs under a CPU quota, set the window to 0 (no polling).
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["LoopSpinner"]


class LoopSpinner:
    """Polls the running loop for ``window_s`` after its last work; see the module doc."""

    def __init__(self, window_s: float, *, work_cpu_s: float = 100e-6) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive (0 means: do not create a spinner)")
        self.window_s = window_s
        self.work_cpu_s = work_cpu_s
        self.spinning = False
        self.ticks = 0
        self._last_work = 0.0
        self._prev_cpu = 0.0

    def wake(self) -> None:
        """Work arrived (a request): poll from now on if the loop was allowed to sleep."""
        if self.spinning:
            return
        self._last_work = time.perf_counter()
        self._prev_cpu = time.thread_time()
        self.spinning = True
        loop = asyncio.get_running_loop()
        loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.perf_counter()
        cpu = time.thread_time()
        self.ticks += 1
        if cpu - self._prev_cpu > self.work_cpu_s:
            self._last_work = now  # the loop ran other callbacks since the previous tick
        self._prev_cpu = cpu
        if now - self._last_work < self.window_s:
            loop.call_soon(self._tick, loop)
        else:
            self.spinning = False
