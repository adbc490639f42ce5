"""The budget gauge: each budget's latest use, turned into ratios when flushed."""

from __future__ import annotations

from somaagent.domain.budgets import Amounts
from somaagent.service.budget_gauge import BudgetGauge
from tests.unit.domain.test_budgets import state


class Sink:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], float] = {}

    def set_budget_remaining(self, *, tenant: str, persona: str, window: str, ratio: float) -> None:
        self.values[(tenant, persona, window)] = ratio


def test_latest_use_per_budget_and_the_cheapest_call_rule() -> None:
    gauge, sink = BudgetGauge(), Sink()
    tokens_only = dict(limit_tokens=1000, limit_usd=None)
    st = state(Amounts(600, 0, 0), Amounts(100, 0, 0), **tokens_only)
    gauge.note("acme", [st], Amounts(), cheapest=Amounts(200, 0, 0))
    gauge.note("acme", [st], Amounts(50, 0, 0))  # a later call: the cheapest call still applies
    gauge.flush(sink)
    assert sink.values == {("acme", "-", "daily"): 0.25}  # (1000 - 750) / 1000
    gauge.note("acme", [st], Amounts(150, 0, 0))
    gauge.flush(sink)
    assert sink.values[("acme", "-", "daily")] == 0.15  # no cheapest call noted since
    gauge.note("acme", [st], Amounts(), cheapest=Amounts(301, 0, 0))  # 300 left: none fits
    gauge.flush(sink)
    assert sink.values[("acme", "-", "daily")] == 0.0
    sink.values.clear()
    gauge.flush(sink)  # nothing noted since the last flush
    assert sink.values == {}
