"""The gateway loop's polling window: it polls while the loop works, then lets it sleep.

Run on real event loops (asyncio's and uvloop, which the gateway uses) with real sockets;
no clock is faked.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from somaagent.entrypoints.gateway import create_app
from somaagent.entrypoints.loop_spin import LoopSpinner
from somaagent.settings import load_settings

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """The loop runner, with the collector off: at the end of a full suite, one pass over
    its heap takes tens of ms of this thread's CPU, which the spinner rightly reads as the
    loop's work (and the CPU bounds below would count)."""
    gc.collect()
    gc.disable()
    try:
        yield LOOPS[request.param]
    finally:
        gc.enable()


def test_an_idle_loop_stops_polling_after_the_window(run: Runner) -> None:
    async def main() -> tuple[bool, bool, int, float]:
        spinner = LoopSpinner(0.002)
        cpu0 = time.thread_time()
        spinner.wake()
        await asyncio.sleep(0)
        polling = spinner.spinning
        await asyncio.sleep(0.1)
        return polling, spinner.spinning, spinner.ticks, time.thread_time() - cpu0

    polling, still, ticks, cpu = run(main())
    assert polling and not still
    assert ticks > 10  # it did poll
    # 2 ms of polling, then sleep: far less than the 100 ms of wall time on CPU
    assert cpu < 0.05


def test_work_keeps_the_loop_polling_and_its_end_lets_it_sleep(run: Runner) -> None:
    async def main() -> tuple[list[bool], bool]:
        # A window well above the GIL's 5 ms turns: a thread left running by another test
        # (a worker's flush) can hold this one off for a turn, which is rightly not work.
        spinner = LoopSpinner(0.02)
        spinner.wake()
        seen = []
        for _ in range(20):  # 20 bursts of 200 us of work, 1 ms apart: never 20 ms idle
            await asyncio.sleep(0.001)
            busy(0.0002)
            seen.append(spinner.spinning)
        await asyncio.sleep(0.2)
        return seen, spinner.spinning

    seen, after = run(main())
    assert all(seen)
    assert not after


def test_waiting_for_the_gil_is_not_work(run: Runner) -> None:
    """Ticks delayed by another thread holding the GIL use no CPU of the loop's thread: the
    window runs out. A wall-clock rule would read every late tick as work and, with turns
    shorter than the window (as when spinners share a core), spin on forever."""

    async def main() -> tuple[bool, float]:
        stop = threading.Event()

        def hog() -> None:
            while not stop.is_set():
                pass

        spinner = LoopSpinner(0.002)
        thread = threading.Thread(target=hog)
        thread.start()
        try:
            spinner.wake()
            started = time.perf_counter()
            while spinner.spinning and time.perf_counter() - started < 2.0:
                await asyncio.sleep(0.001)
            return spinner.spinning, time.perf_counter() - started
        finally:
            stop.set()
            thread.join()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # GIL turns of 0.2 ms, shorter than the 2 ms window
    try:
        still, waited = run(main())
    finally:
        sys.setswitchinterval(interval)
    assert not still, f"still polling after {waited:.2f} s beside a thread holding the GIL"


def test_sockets_are_served_while_polling(run: Runner) -> None:
    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        spinner = LoopSpinner(0.05)
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            spinner.wake()
            threading.Timer(0.01, b.send, args=(b"ping",)).start()
            data = await asyncio.wait_for(loop.sock_recv(a, 16), timeout=2)
            return data, spinner.ticks
        finally:
            a.close()
            b.close()

    data, ticks = run(main())
    assert data == b"ping"
    assert ticks > 10  # the loop was polling, not blocked, when the bytes came


def test_a_positive_window_is_required() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopSpinner(0)


def test_the_gateway_polls_only_when_configured() -> None:
    assert load_settings({}).gateway_loop_spin_us == 0
    assert create_app(load_settings({})).spinner is None
    app = create_app(load_settings({"SOMA_GATEWAY_LOOP_SPIN_US": "1500"}))
    assert app.spinner is not None and app.spinner.window_s == pytest.approx(0.0015)
