"""A per-tenant async gate: budget operations share it; a rebuild or a reset holds it alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

__all__ = ["TenantGate"]


@dataclass(slots=True)
class _GateState:
    readers: int = 0
    closed: asyncio.Future[None] | None = None
    drained: asyncio.Future[None] | None = None


class TenantGate:
    """Per-tenant gate: operations share it; a rebuild or reset holds it alone."""

    def __init__(self) -> None:
        self._states: dict[str, _GateState] = {}

    def shared(self, tenant: str) -> _Shared:
        """``async with gate.shared(tenant):`` an operation, alongside the other shared ones."""
        return _Shared(self, tenant)

    @contextlib.asynccontextmanager
    async def exclusive(self, tenant: str) -> AsyncIterator[None]:
        while True:
            st = self._states.setdefault(tenant, _GateState())
            if st.closed is None:
                break
            await asyncio.shield(st.closed)
        loop = asyncio.get_running_loop()
        closed = st.closed = loop.create_future()
        try:
            if st.readers:
                st.drained = loop.create_future()
                await st.drained
            yield
        finally:
            st.drained = st.closed = None
            closed.set_result(None)
            if st.readers == 0 and self._states.get(tenant) is st:
                del self._states[tenant]


class _Shared:
    """``TenantGate.shared``: a plain class rather than a generator context manager, which
    costs an async generator (and its registration with the event loop) per use; every
    budget operation of a call enters one."""

    __slots__ = ("_gate", "_state", "_tenant")

    def __init__(self, gate: TenantGate, tenant: str) -> None:
        self._gate = gate
        self._tenant = tenant
        self._state: _GateState | None = None

    async def __aenter__(self) -> None:
        states, tenant = self._gate._states, self._tenant
        st = states.get(tenant)
        while st is not None and st.closed is not None:  # held exclusively: wait it out
            await asyncio.shield(st.closed)
            st = states.get(tenant)
        if st is None:
            st = states[tenant] = _GateState()
        st.readers += 1
        self._state = st

    async def __aexit__(self, *exc_info: object) -> None:
        st, self._state = self._state, None
        if st is None:
            return
        st.readers -= 1
        if st.readers == 0:
            states, tenant = self._gate._states, self._tenant
            if st.drained is not None and not st.drained.done():
                st.drained.set_result(None)
            elif st.closed is None and states.get(tenant) is st:
                del states[tenant]
