"""The ``x-soma-budget-remaining`` text of a budgeted call (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from somaagent.domain.budgets import Amounts, BudgetState, nano_to_usd, us_to_gpu_hours

__all__ = ["tightest_remaining"]


def tightest_remaining(states: Sequence[BudgetState], extra: Amounts) -> str | None:
    """What the tightest of ``states`` has left once ``extra`` is spent too, as
    ``<id> <window> <key>: tokens=N usd=D gpu_hours=D`` (limited dimensions only, floored
    at 0); ``None`` without a budget. The tightest is the first of the lowest
    ``remaining_ratio``; the sums are integers, with no intermediate objects (this is a
    response header of every budgeted call)."""
    if not states:
        return None
    tight = states[0]
    if len(states) > 1:
        best = tight.remaining_ratio()
        for state in states[1:]:
            ratio = state.remaining_ratio()
            if ratio < best:
                tight, best = state, ratio
    limits, spent, held = tight.limits, tight.spent, tight.reserved
    parts = [f"{tight.budget.budget_id} {tight.budget.window} {tight.window.key}:"]
    if limits.tokens is not None:
        left = limits.tokens - spent.tokens - held.tokens - extra.tokens
        parts.append(f"tokens={max(0, left)}")
    if limits.usd_nano is not None:
        left = limits.usd_nano - spent.usd_nano - held.usd_nano - extra.usd_nano
        parts.append(f"usd={nano_to_usd(max(0, left)):f}")
    if limits.gpu_us is not None:
        left = limits.gpu_us - spent.gpu_us - held.gpu_us - extra.gpu_us
        parts.append(f"gpu_hours={us_to_gpu_hours(max(0, left)):f}")
    return " ".join(parts)
