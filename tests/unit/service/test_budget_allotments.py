"""The bookkeeping of one allotment, and how big an allotment is (no I/O)."""

from __future__ import annotations

from somaagent.adapters.redis_budget import CounterValues
from somaagent.domain.budgets import Amounts, Limits
from somaagent.service.budget_allotments import MARGIN_MS, Allotment, allotment_size

WORST = Amounts(300, 100_000, 0)
OPEN = Limits(None, None, None)


def allotment(size: Amounts = WORST, **kw: object) -> Allotment:
    snapshot = (
        CounterValues(Amounts(1000, 5, 0), Amounts(30, 0, 0)),
        CounterValues(Amounts(7, 0, 0), Amounts()),
    )
    fields: dict[str, object] = {
        "reservation_id": "allot:x",
        "tenant": "t",
        "keys": ("daily", "monthly"),
        "amounts": size,
        "opened": 100.0,
        "funds_until": 100.5,
        "lifetime_ms": 62_500,
        "snapshot": snapshot,
    }
    fields.update(kw)
    return Allotment(**fields)  # type: ignore[arg-type]


def test_size_is_calls_worst_cases_when_no_limit_is_near() -> None:
    assert allotment_size(WORST, 32, [OPEN]) == Amounts(9600, 3_200_000, 0)


def test_size_holds_at_most_a_sixteenth_of_the_smallest_limit() -> None:
    # 1/16 of 96,000 tokens is 6,000: 20 worst cases, fewer than 32.
    limits = [Limits(96_000, None, None), Limits(None, 10**12, None)]
    assert allotment_size(WORST, 32, limits) == Amounts(6000, 2_000_000, 0)
    # 1/16 of 3.2 M nano-USD is 200,000: exactly 2 worst cases.
    assert allotment_size(WORST, 32, [Limits(None, 3_200_000, None)]) == Amounts(600, 200_000, 0)


def test_no_allotment_when_a_sixteenth_does_not_hold_two_calls() -> None:
    assert allotment_size(WORST, 32, [Limits(16 * 599, None, None)]) is None
    assert allotment_size(WORST, 1, [OPEN]) is None


def test_a_dimension_the_call_does_not_use_does_not_limit_the_size() -> None:
    assert allotment_size(WORST, 4, [Limits(None, None, 0)]) == Amounts(1200, 400_000, 0)


def test_calls_fit_until_the_held_and_settled_units_reach_the_size() -> None:
    a = allotment(Amounts(900, 300_000, 0))
    for _ in range(3):
        assert a.fits(WORST, 60_000, 100.1)
        a.take(WORST)
    assert not a.fits(WORST, 60_000, 100.1)
    a.give_back(WORST, Amounts(100, 10_000, 0))  # 200 tokens back, 100 used
    assert a.fits(Amounts(200, 90_000, 0), 60_000, 100.1)
    assert not a.fits(Amounts(201, 0, 0), 60_000, 100.1)
    assert a.inflight == 2 and a.settled == Amounts(100, 10_000, 0)


def test_no_call_is_funded_after_its_time_or_past_its_deadline() -> None:
    a = allotment(Amounts(3000, 10**6, 0))
    assert not a.fits(WORST, 1000, 100.5)  # funds_until reached
    # 0.1 s in: a call held for 61.4 s + the margin would end after the allotment's 62.5 s.
    assert a.fits(WORST, 62_500 - 100 - MARGIN_MS, 100.1)
    assert not a.fits(WORST, 62_500 - 100 - MARGIN_MS + 1, 100.1)
    a.draining = True
    assert not a.fits(WORST, 1000, 100.1)


def test_values_are_what_a_per_call_reservation_would_have_found() -> None:
    a = allotment(Amounts(3000, 10**6, 0))
    a.take(WORST)
    a.take(WORST)
    a.give_back(WORST, Amounts(120, 40_000, 0))
    daily, monthly = a.values()
    assert daily == CounterValues(Amounts(1120, 40_005, 0), Amounts(330, 100_000, 0))
    assert monthly == CounterValues(Amounts(127, 40_000, 0), Amounts(300, 100_000, 0))


def test_what_is_owed_per_counter_and_forgiven_on_a_reset_or_rebuild() -> None:
    a = allotment(Amounts(3000, 10**6, 0))
    for actual in (Amounts(100, 1, 0), None, Amounts(5, 2, 0)):
        a.take(WORST)
        a.give_back(WORST, actual)
    assert a.owed == [Amounts(105, 3, 0), Amounts(105, 3, 0)]
    a.forgive({"daily"})
    a.take(WORST)
    a.give_back(WORST, Amounts(1, 1, 0))
    assert a.owed == [Amounts(1, 1, 0), Amounts(106, 4, 0)]
    assert a.settled == Amounts(106, 4, 0)  # what the calls used, reset or not


def test_closable_once_draining_with_no_call_in_flight() -> None:
    a = allotment(Amounts(3000, 10**6, 0))
    a.take(WORST)
    a.draining = True
    assert not a.closable
    a.give_back(WORST, None)
    assert a.closable and a.held == Amounts()
