"""``soma_budget_remaining_ratio``: each budget's use noted per call, published at scrape.

A call only updates a dict entry (the latest use of each budget it touched); the gauge is
computed when ``/metrics`` is scraped (``flush``), so the hot path pays for no gauge update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from somaagent.domain.budgets import Amounts, BudgetState, Limits

__all__ = ["BudgetGauge"]


class GaugeSink(Protocol):
    def set_budget_remaining(
        self, *, tenant: str, persona: str, window: str, ratio: float
    ) -> None: ...


class BudgetGauge:
    """The latest use of each (tenant, persona, window) budget since the last flush."""

    def __init__(self) -> None:
        # Per budget: its limits, the (spent, reserved, extra) to add up at flush, cheapest.
        self._pending: dict[
            tuple[str, str, str], tuple[Limits, tuple[Amounts, Amounts, Amounts], Amounts | None]
        ] = {}

    def note(
        self,
        tenant: str,
        states: Sequence[BudgetState],
        extra: Amounts,
        *,
        cheapest: Amounts | None = None,
    ) -> None:
        """Note each budget's use, counting ``extra`` as spent too.

        A budget whose remaining amount cannot cover the ``cheapest`` call the caller could
        make (per dimension) reads 0: it is exhausted in practice, since admission reserves
        the worst case and actual use stays below it, so the counter itself never reaches
        the limit. Without ``cheapest`` the last one noted for the budget applies.
        """
        pending = self._pending
        for st in states:
            key = (tenant, st.budget.persona or "-", st.budget.window)
            need = cheapest
            if need is None:
                previous = pending.get(key)
                need = previous[2] if previous is not None else None
            pending[key] = (st.limits, (st.spent, st.reserved, extra), need)

    def flush(self, sink: GaugeSink) -> None:
        """Publish the ratio of every budget noted since the last flush."""
        pending, self._pending = self._pending, {}
        for (tenant, persona, window), (lim, (spent, reserved, extra), cheapest) in pending.items():
            used = spent + reserved + extra  # added here, not per call
            limits = (lim.tokens, lim.usd_nano, lim.gpu_us)
            ratios = [
                (limit - u) / limit if limit > 0 else 0.0
                for limit, u in zip(limits, used.as_tuple(), strict=True)
                if limit is not None
            ]
            if cheapest is not None and any(
                limit is not None and limit - u < need
                for limit, u, need in zip(limits, used.as_tuple(), cheapest.as_tuple(), strict=True)
            ):
                ratios.append(0.0)
            sink.set_budget_remaining(
                tenant=tenant, persona=persona, window=window, ratio=min(ratios) if ratios else 1.0
            )
