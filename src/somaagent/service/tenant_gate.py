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

    @contextlib.asynccontextmanager
    async def shared(self, tenant: str) -> AsyncIterator[None]:
        st = self._states.get(tenant)
        while st is not None and st.closed is not None:
            await asyncio.shield(st.closed)
            st = self._states.get(tenant)
        if st is None:
            st = self._states[tenant] = _GateState()
        st.readers += 1
        try:
            yield
        finally:
            st.readers -= 1
            if st.readers == 0:
                if st.drained is not None and not st.drained.done():
                    st.drained.set_result(None)
                elif st.closed is None and self._states.get(tenant) is st:
                    del self._states[tenant]

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
