"""An upstream's slots: at most ``max_in_flight`` at once, waiters served in arrival order,
a full queue or a long wait shed, and no slot lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest

from somaagent.domain.routing import Concurrency
from somaagent.service.upstream_slots import Shed, Slot, UpstreamSlots


def slots(in_flight: int = 1, queued: int = 2, wait_ms: float = 60_000) -> UpstreamSlots:
    return UpstreamSlots(Concurrency(in_flight, queued, wait_ms))


def taken(got: Slot | Shed | None) -> Slot:
    assert isinstance(got, Slot), got
    return got


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_free_slots_are_taken_at_once_and_given_back() -> None:
    async def main() -> None:
        s = slots(in_flight=2)
        a, b = taken(await s.take(1.0)), taken(await s.take(1.0))
        assert (a.waited_ms, s.try_take(), s.snapshot().in_flight) == (0.0, None, 2)
        a.release()
        a.release()  # a second release gives nothing back twice
        assert s.snapshot().in_flight == 1
        b.release()
        assert s.snapshot() == s.snapshot().__class__(2, 0, 0, 0, 0, 0.0)

    asyncio.run(main())


def test_waiters_are_served_in_arrival_order_and_newcomers_do_not_overtake() -> None:
    async def main() -> None:
        s, order = slots(in_flight=1, queued=3), []
        first = taken(await s.take(1.0))

        async def wait(name: str) -> None:
            slot = taken(await s.take(5.0))
            order.append(name)
            await _settle()
            slot.release()

        tasks = [asyncio.create_task(wait(n)) for n in "abc"]
        await _settle()
        assert s.snapshot().queued == 3
        first.release()
        assert s.try_take() is None  # the freed slot went to "a", not to a newcomer
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"]
        snap = s.snapshot()
        assert (snap.in_flight, snap.queued, snap.waited_s > 0) == (0, 0, True)

    asyncio.run(main())


def test_a_full_queue_sheds_at_once_and_a_long_wait_sheds_after_it() -> None:
    async def main() -> None:
        s = slots(in_flight=1, queued=1, wait_ms=50)
        held = taken(await s.take(1.0))
        waiting = asyncio.create_task(s.take(1.0))
        await _settle()
        assert await s.take(1.0) == Shed("queue_full", 0.0)
        shed = await waiting
        assert isinstance(shed, Shed) and shed.reason == "queue_timeout"
        assert 45 <= shed.waited_ms < 1000
        snap = s.snapshot()
        assert (snap.in_flight, snap.queued, snap.shed_full, snap.shed_timeout) == (1, 0, 1, 1)
        held.release()
        assert taken(await s.take(1.0)).waited_ms == 0.0

    asyncio.run(main())


def test_the_call_deadline_bounds_the_wait() -> None:
    async def main() -> None:
        s = slots(in_flight=1, queued=1, wait_ms=60_000)
        taken(await s.take(1.0))
        shed = await s.take(0.05)
        assert isinstance(shed, Shed) and shed.reason == "queue_timeout"
        assert shed.waited_ms < 1000

    asyncio.run(main())


@pytest.mark.parametrize("handed_over", [False, True])
def test_a_cancelled_waiter_leaves_the_queue_and_loses_no_slot(handed_over: bool) -> None:
    async def main() -> None:
        s = slots(in_flight=1, queued=2)
        held = taken(await s.take(1.0))
        waiter = asyncio.create_task(s.take(5.0))
        await _settle()
        if handed_over:
            held.release()  # the slot passes to the waiter, which is cancelled before it runs
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        if not handed_over:
            assert s.snapshot().queued == 0
            held.release()
        assert s.snapshot().in_flight == 0
        assert taken(await s.take(1.0)).waited_ms == 0.0

    asyncio.run(main())


def test_an_unlimited_slot_releases_nothing() -> None:
    Slot(None, 0.0).release()


def test_a_waiter_whose_client_left_gives_its_place_up() -> None:
    async def main() -> None:
        s, left = slots(in_flight=1, queued=1), False
        held = taken(await s.take(1.0))
        waiter = asyncio.create_task(s.take(5.0, gone=lambda: left))
        await asyncio.sleep(0.12)
        assert s.snapshot().queued == 1  # checked, and still there
        left = True
        shed = await waiter
        assert isinstance(shed, Shed) and shed.reason == "client_left"
        assert 100 <= shed.waited_ms < 1000
        snap = s.snapshot()
        assert (snap.queued, snap.shed_full, snap.shed_timeout) == (0, 0, 0)  # not a shed
        held.release()
        assert taken(await s.take(1.0)).waited_ms == 0.0

    asyncio.run(main())
