"""``x-soma-budget-remaining``: the tightest budget's remainder, in integers."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from somaagent.domain.budget_header import tightest_remaining
from somaagent.domain.budgets import (
    Amounts,
    BudgetState,
    Limits,
    nano_to_usd,
    us_to_gpu_hours,
    window_of,
)
from tests.unit.domain.test_budgets import NOW, budget


def reference(states: list[BudgetState], extra: Amounts) -> str | None:
    """The header as it was computed before (Amounts arithmetic, ``min`` by ratio)."""
    if not states:
        return None
    tight = min(states, key=lambda s: s.remaining_ratio())
    left = tight.limits.remaining(tight.spent + tight.reserved + extra)
    parts = [f"{tight.budget.budget_id} {tight.budget.window} {tight.window.key}:"]
    if left.tokens is not None:
        parts.append(f"tokens={max(0, left.tokens)}")
    if left.usd_nano is not None:
        parts.append(f"usd={nano_to_usd(max(0, left.usd_nano)):f}")
    if left.gpu_us is not None:
        parts.append(f"gpu_hours={us_to_gpu_hours(max(0, left.gpu_us)):f}")
    return " ".join(parts)


def ratio_reference(state: BudgetState) -> float:
    used = (state.spent + state.reserved).as_tuple()
    limits = (state.limits.tokens, state.limits.usd_nano, state.limits.gpu_us)
    ratios = [
        (limit - spent) / limit if limit > 0 else 0.0
        for limit, spent in zip(limits, used, strict=True)
        if limit is not None
    ]
    return min(ratios) if ratios else 1.0


_UNITS = st.integers(0, 10**13)
_LIMIT = st.one_of(st.none(), st.integers(0, 10**13))


@st.composite
def states(draw: st.DrawFn) -> BudgetState:
    persona = draw(st.sampled_from([None, "dev"]))
    b = budget(persona=persona, limit_tokens=1000)
    limits = Limits(draw(_LIMIT), draw(_LIMIT), draw(_LIMIT))
    spent = Amounts(draw(_UNITS), draw(_UNITS), draw(_UNITS))
    held = Amounts(draw(_UNITS), draw(_UNITS), draw(_UNITS))
    return BudgetState(b, window_of(b, NOW), limits, spent, held)


@settings(max_examples=400, deadline=None)
@given(st.lists(states(), max_size=4), _UNITS, _UNITS, _UNITS)
def test_the_header_and_ratio_equal_the_reference(
    found: list[BudgetState], tokens: int, nano: int, us: int
) -> None:
    extra = Amounts(tokens, nano, us)
    assert tightest_remaining(found, extra) == reference(found, extra)
    for state in found:
        assert state.remaining_ratio() == ratio_reference(state)


def test_the_first_of_equally_tight_budgets_is_named() -> None:
    tenant = budget(limit_tokens=1000)
    persona = budget(limit_tokens=1000, persona="dev")
    a = BudgetState(tenant, window_of(tenant, NOW), tenant.limits(), Amounts(), Amounts())
    b = BudgetState(persona, window_of(persona, NOW), persona.limits(), Amounts(), Amounts())
    header = tightest_remaining([a, b], Amounts(10, 0, 0))
    assert header == reference([a, b], Amounts(10, 0, 0))
    assert header is not None and header.startswith(f"{tenant.budget_id} daily ")
    assert "tokens=990" in header and f"usd={Decimal('10.000000000'):f}" in header
