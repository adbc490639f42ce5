"""Exact sums of money: every digit of Decimal(38, 18) amounts is kept, or it raises."""

from __future__ import annotations

import decimal
from decimal import Decimal

import pytest

from somaagent.domain.money import exact_sum

LARGEST = Decimal("99999999999999999999.999999999999999999")  # Decimal(38, 18)'s maximum
SMALLEST = Decimal("0.000000000000000001")


def test_the_default_context_would_round_where_exact_sum_does_not() -> None:
    exact = Decimal("199999999999999999999.999999999999999998")
    assert LARGEST + LARGEST != exact  # 28 significant digits: rounded
    assert exact_sum([LARGEST, LARGEST]) == exact
    assert exact_sum([LARGEST, SMALLEST]) == Decimal("100000000000000000000")
    assert exact_sum([LARGEST] * 1000 + [SMALLEST]) == Decimal(
        "99999999999999999999999.999999999999999001"
    )
    assert exact_sum([]) == 0


def test_a_sum_that_would_need_rounding_raises() -> None:
    with pytest.raises(decimal.Inexact):
        exact_sum([Decimal("1e50"), SMALLEST])  # 69 digits
