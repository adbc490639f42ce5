"""Exact sums of money (pure).

Python's default decimal context keeps 28 significant digits, fewer than one
``Decimal(38, 18)`` amount can carry: a plain ``+`` of two large costs would round silently.
Sums here run in a 60-digit context, which holds any realistic total of such amounts, and
trap ``Inexact``: a sum that would need rounding raises instead of drifting.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal

__all__ = ["SUM_CONTEXT", "exact_sum"]

SUM_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.Inexact])


def exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    """The sum of ``amounts``, every digit kept (``decimal.Inexact`` if it cannot be)."""
    total = Decimal(0)
    add = SUM_CONTEXT.add
    for amount in amounts:
        total = add(total, amount)
    return total
