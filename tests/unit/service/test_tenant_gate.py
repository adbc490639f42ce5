"""The per-tenant gate: shared operations run together, an exclusive one runs alone."""

from __future__ import annotations

import asyncio

from somaagent.service.tenant_gate import TenantGate


async def _step() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_shared_holders_overlap_and_leave_no_state() -> None:
    async def main() -> None:
        gate, inside, most = TenantGate(), 0, 0

        async def op() -> None:
            nonlocal inside, most
            async with gate.shared("t"):
                inside += 1
                most = max(most, inside)
                await _step()
                inside -= 1

        await asyncio.gather(*(op() for _ in range(5)))
        assert most == 5
        assert gate._states == {}

    asyncio.run(main())


def test_exclusive_waits_for_shared_and_shared_waits_for_exclusive() -> None:
    async def main() -> None:
        gate, log = TenantGate(), []

        async def reader(name: str) -> None:
            async with gate.shared("t"):
                log.append(f"{name} in")
                await _step()
                log.append(f"{name} out")

        async def writer() -> None:
            async with gate.exclusive("t"):
                log.append("w in")
                await _step()
                log.append("w out")

        first = asyncio.create_task(reader("a"))
        await asyncio.sleep(0)
        held = asyncio.create_task(writer())
        await asyncio.sleep(0)
        late = asyncio.create_task(reader("b"))
        other = asyncio.create_task(reader_other(gate, log))
        await asyncio.gather(first, held, late, other)
        assert log.index("a out") < log.index("w in")
        assert log.index("w out") < log.index("b in")
        assert log.index("x in") < log.index("w out")  # another tenant is not held up
        assert gate._states == {}

    async def reader_other(gate: TenantGate, log: list[str]) -> None:
        async with gate.shared("other"):
            log.append("x in")

    asyncio.run(main())


def test_a_shared_waiter_cancelled_while_held_out_leaves_no_reader() -> None:
    async def main() -> None:
        gate = TenantGate()
        release = asyncio.Event()

        async def writer() -> None:
            async with gate.exclusive("t"):
                await release.wait()

        held = asyncio.create_task(writer())
        await asyncio.sleep(0)

        async def reader() -> None:
            async with gate.shared("t"):
                raise AssertionError("entered while held exclusively")

        waiting = asyncio.create_task(reader())
        await _step()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert gate._states["t"].readers == 0
        release.set()
        await held
        assert gate._states == {}
        async with gate.shared("t"):
            assert gate._states["t"].readers == 1
        assert gate._states == {}

    asyncio.run(main())


def test_an_error_inside_a_shared_block_still_releases_it() -> None:
    async def main() -> None:
        gate = TenantGate()
        try:
            async with gate.shared("t"):
                raise ValueError("boom")
        except ValueError:
            pass
        assert gate._states == {}
        async with gate.exclusive("t"):
            pass

    asyncio.run(main())
