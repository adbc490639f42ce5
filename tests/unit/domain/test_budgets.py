"""Budgets domain: validation, calendar windows across DST, units rounding, keys, summaries."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somaagent.domain.budget_header import tightest_remaining
from somaagent.domain.budgets import (
    MAX_AMOUNT,
    Amounts,
    Budget,
    BudgetCreate,
    BudgetError,
    BudgetState,
    BudgetUpdate,
    Charge,
    Limits,
    ResetRecord,
    UnknownBudget,
    WindowTotals,
    check_budget_id,
    counter_key,
    done_key,
    gpu_hours_to_us_floor,
    gpu_ms_to_us_ceil,
    reservation_key,
    reservations_key,
    summarize,
    usd_to_nano_ceil,
    usd_to_nano_floor,
    window_of,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def create(**changes: Any) -> BudgetCreate:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "window": "daily",
        "timezone": "Europe/Paris",
        "limit_usd": Decimal("10"),
    }
    fields.update(changes)
    return BudgetCreate(**fields)


def budget(**changes: Any) -> Budget:
    return create(**changes).budget("0123456789abcdef", NOW)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- validation ----------------------------------------------------------------------------


def test_a_valid_budget_keeps_its_fields() -> None:
    b = budget(persona="support", limit_tokens=1000, limit_gpu_hours=Decimal("1.5"))
    assert (b.tenant, b.persona, b.window, b.timezone) == (
        "acme",
        "support",
        "daily",
        "Europe/Paris",
    )
    assert (b.limit_tokens, b.limit_usd, b.limit_gpu_hours) == (1000, Decimal(10), Decimal("1.5"))
    assert b.on_exceed == "downgrade" and b.created_at == b.updated_at == NOW
    assert b.scope == "acme persona support" and budget().scope == "acme"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"limit_usd": Decimal("-0.01")}, "limit_usd must not be negative"),
        ({"limit_tokens": -1}, "limit_tokens must not be negative"),
        ({"limit_gpu_hours": Decimal("-1")}, "limit_gpu_hours must not be negative"),
        ({"approval_above_usd": Decimal("-1")}, "approval_above_usd must not be negative"),
        ({"limit_usd": None}, "at least one limit"),
        ({"timezone": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"timezone": ""}, "unknown time zone"),
        ({"timezone": "localtime"}, "unknown time zone"),
        ({"timezone": "../../etc/passwd"}, "unknown time zone"),
        ({"timezone": "America"}, "unknown time zone"),
        ({"tenant": "a{b}"}, "tenant must be"),
        ({"tenant": ""}, "tenant must be"),
        ({"persona": "two words"}, "persona must be"),
        ({"window": "weekly"}, "window must be one of daily, monthly"),
        ({"on_exceed": "explode"}, "on_exceed must be one of"),
        ({"limit_usd": Decimal("1000000.000000000000000001")}, "at most 1000000"),
        ({"limit_gpu_hours": Decimal("1000001")}, "at most 1000000"),
        ({"limit_tokens": 10**15 + 1}, "limit_tokens must be at most"),
        ({"limit_usd": Decimal("0.0000000000000000001")}, "more than 18 decimal places"),
        ({"limit_usd": Decimal("NaN")}, "finite"),
        ({"limit_usd": Decimal("Infinity")}, "finite"),
        ({"limit_usd": 1.5}, "decimal number, got float"),
        ({"limit_tokens": True}, "whole number"),
        ({"limit_tokens": Decimal(5)}, "whole number"),
    ],
)
def test_bad_input_is_a_clear_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BudgetError, match=message):
        create(**changes)


def test_zero_limits_and_integers_are_accepted() -> None:
    b = budget(limit_usd=0, limit_tokens=0, limit_gpu_hours=2)
    assert b.limits() == Limits(0, 0, 7_200_000_000)
    assert isinstance(b.limit_usd, Decimal) and isinstance(b.limit_gpu_hours, Decimal)
    assert budget(limit_usd=Decimal("1.000000000000000000000")).limit_usd == 1  # 18 dp at most


def test_update_changes_only_what_is_given_and_validates_the_result() -> None:
    b = budget(limit_tokens=100)
    later = NOW + timedelta(hours=1)
    updated = BudgetUpdate(limit_usd=None, on_exceed="deny").apply(b, later)
    assert (updated.limit_usd, updated.limit_tokens, updated.on_exceed) == (None, 100, "deny")
    assert updated.updated_at == later and updated.created_at == NOW
    with pytest.raises(BudgetError, match="at least one limit"):
        BudgetUpdate(limit_tokens=None).apply(updated, later)
    with pytest.raises(BudgetError, match="nothing to update"):
        BudgetUpdate().apply(b, later)
    with pytest.raises(BudgetError, match="must not be negative"):
        BudgetUpdate(limit_tokens=-5).apply(b, later)
    with pytest.raises(BudgetError, match="on_exceed"):
        BudgetUpdate(on_exceed="nope").apply(b, later)  # type: ignore[arg-type]


def test_budget_ids_are_checked_before_any_lookup() -> None:
    assert check_budget_id("0123456789abcdef") == "0123456789abcdef"
    for bad in ("", "0123456789ABCDEF", "0123456789abcde", "x" * 16, "1; DROP TABLE budgets"):
        with pytest.raises(UnknownBudget):
            check_budget_id(bad)


def test_reset_records_need_an_actor_and_a_reason() -> None:
    fields: dict[str, Any] = {
        "budget_id": "0123456789abcdef",
        "tenant": "acme",
        "window_key": "2026-11-22",
        "reset_at": NOW,
        "spent_before_tokens": 0,
        "spent_before_usd": Decimal(0),
        "spent_before_gpu_ms": Decimal(0),
    }
    ResetRecord(**fields, actor="alice", reason="refund agreed")
    for actor, reason in (("", "r"), ("  ", "r"), ("a", ""), ("a\n", "r"), ("a", "x" * 2001)):
        with pytest.raises(BudgetError):
            ResetRecord(**fields, actor=actor, reason=reason)


# -- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "ceil", "floor"),
    [
        ("0", 0, 0),
        ("0.000000000000000001", 1, 0),
        ("0.000000001", 1, 1),
        ("0.000000001000000001", 2, 1),
        ("0.0000000019", 2, 1),
        ("1", 10**9, 10**9),
        ("1000000", 10**15, 10**15),
        ("12345.678901234567890123", 12345678901235, 12345678901234),
    ],
)
def test_usd_units_round_up_for_costs_and_down_for_limits(usd: str, ceil: int, floor: int) -> None:
    assert usd_to_nano_ceil(Decimal(usd)) == ceil
    assert usd_to_nano_floor(Decimal(usd)) == floor


def test_gpu_units_round_up_for_time_and_down_for_limits() -> None:
    assert gpu_ms_to_us_ceil(Decimal("0.0001")) == 1
    assert gpu_ms_to_us_ceil(Decimal("1.000")) == 1000
    assert gpu_ms_to_us_ceil(Decimal("12.3456")) == 12346
    assert gpu_hours_to_us_floor(Decimal("1")) == 3_600_000_000
    assert gpu_hours_to_us_floor(Decimal("0.000000000000000001")) == 0
    assert gpu_hours_to_us_floor(Decimal("0.0000000003")) == 1  # 1.08 us
    largest = budget(limit_tokens=10**15, limit_usd=Decimal(10**6), limit_gpu_hours=Decimal(10**6))
    limits = largest.limits()
    assert all(v is not None and v < 2**53 for v in (limits.tokens, limits.usd_nano, limits.gpu_us))


def test_negative_or_non_finite_costs_are_refused() -> None:
    for bad in (Decimal("-0.000000001"), Decimal("NaN"), Decimal("-Infinity")):
        with pytest.raises(BudgetError):
            usd_to_nano_ceil(bad)
        with pytest.raises(BudgetError):
            gpu_ms_to_us_ceil(bad)
    with pytest.raises(BudgetError, match="finite Decimal"):
        usd_to_nano_ceil(0.5)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=10**6, places=18, allow_nan=False))
def test_ceil_and_floor_bracket_the_exact_value(usd: Decimal) -> None:
    up, down = usd_to_nano_ceil(usd), usd_to_nano_floor(usd)
    assert Decimal(down) <= usd * 10**9 <= Decimal(up) and up - down in (0, 1)
    assert (up == down) == (usd * 10**9 == (usd * 10**9).to_integral_value())


def test_amounts_are_integers_within_bounds() -> None:
    assert Amounts(1, 2, 3) + Amounts(10, 20, 30) == Amounts(11, 22, 33)
    assert Amounts(11, 22, 33) - Amounts(10, 20, 30) == Amounts(1, 2, 3)
    assert Amounts() - Amounts(1, 0, 0) == Amounts(-1, 0, 0)  # only checked() bounds them
    assert Amounts(MAX_AMOUNT, 0, 0).checked() == Amounts(MAX_AMOUNT, 0, 0)
    with pytest.raises(BudgetError, match="tokens must be between"):
        Amounts(MAX_AMOUNT + 1, 0, 0).checked()
    with pytest.raises(BudgetError, match="usd_nano must be between"):
        Amounts(0, -1, 0).checked()
    with pytest.raises(BudgetError, match="must be an int"):
        Amounts(1.0, 0, 0)  # type: ignore[arg-type]
    assert Amounts.of_charge(7, Decimal("0.0000000001"), Decimal("0.5")) == Amounts(7, 1, 500)


# -- windows -------------------------------------------------------------------------------


def test_daily_windows_follow_the_local_calendar() -> None:
    w = window_of(budget(timezone="Europe/Paris"), utc(2026, 11, 22, 23, 30))  # 00:30 in Paris
    assert (w.key, w.start, w.end) == ("2026-11-23", utc(2026, 11, 22, 23), utc(2026, 11, 23, 23))
    k = window_of(budget(timezone="Asia/Kolkata"), utc(2026, 11, 22, 18, 29))  # 23:59 IST
    assert (k.key, k.start, k.end) == (
        "2026-11-22",
        utc(2026, 11, 21, 18, 30),
        utc(2026, 11, 22, 18, 30),
    )
    assert window_of(budget(timezone="Asia/Kolkata"), utc(2026, 11, 22, 18, 30)).key == "2026-11-23"


@pytest.mark.parametrize(
    ("zone", "day", "start", "hours"),
    [
        ("America/New_York", (2026, 3, 8), utc(2026, 3, 8, 5), 23),  # spring forward at 02:00
        ("America/New_York", (2026, 11, 1), utc(2026, 11, 1, 4), 25),  # fall back at 02:00
        ("America/Havana", (2026, 3, 8), utc(2026, 3, 8, 5), 23),  # midnight does not exist
        ("America/Havana", (2026, 11, 1), utc(2026, 11, 1, 4), 25),  # midnight happens twice
        ("America/Santiago", (2026, 9, 6), utc(2026, 9, 6, 4), 23),
        ("Australia/Lord_Howe", (2026, 4, 5), utc(2026, 4, 4, 13), 24.5),  # half-hour DST
        ("Asia/Kolkata", (2026, 3, 8), utc(2026, 3, 7, 18, 30), 24),
    ],
)
def test_daily_windows_across_dst_last_23_to_25_hours(
    zone: str, day: tuple[int, int, int], start: datetime, hours: float
) -> None:
    noon = datetime(*day, 12, tzinfo=ZoneInfo(zone))
    w = window_of(budget(timezone=zone), noon)
    assert w.key == "{:04d}-{:02d}-{:02d}".format(*day)
    assert w.start == start and w.end - w.start == timedelta(hours=hours)
    assert window_of(budget(timezone=zone), w.start).key == w.key
    assert window_of(budget(timezone=zone), w.end - timedelta(microseconds=1)).key == w.key
    assert window_of(budget(timezone=zone), w.end).key != w.key


@pytest.mark.parametrize(
    ("zone", "at", "key", "start", "end"),
    [
        ("UTC", utc(2026, 1, 31, 23, 59), "2026-01", utc(2026, 1, 1), utc(2026, 2, 1)),
        ("UTC", utc(2028, 2, 29, 12), "2028-02", utc(2028, 2, 1), utc(2028, 3, 1)),
        ("UTC", utc(2026, 12, 31, 23, 59), "2026-12", utc(2026, 12, 1), utc(2027, 1, 1)),
        # 2026-03-31 23:30 in New York is already April in UTC; DST moves the month's end
        (
            "America/New_York",
            utc(2026, 4, 1, 3, 30),
            "2026-03",
            utc(2026, 3, 1, 5),
            utc(2026, 4, 1, 4),
        ),
        (
            "Asia/Kolkata",
            utc(2026, 11, 30, 18, 30),
            "2026-12",
            utc(2026, 11, 30, 18, 30),
            utc(2026, 12, 31, 18, 30),
        ),
    ],
)
def test_monthly_windows_at_month_ends(
    zone: str, at: datetime, key: str, start: datetime, end: datetime
) -> None:
    w = window_of(budget(timezone=zone, window="monthly"), at)
    assert (w.key, w.start, w.end) == (key, start, end)


ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Havana",
    "America/Santiago",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from(["daily", "monthly"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31)),
)
def test_every_instant_lies_in_its_window(zone: str, kind: str, naive: datetime) -> None:
    at = naive.replace(tzinfo=UTC)
    w = window_of(budget(timezone=zone, window=kind), at)
    assert w.start <= at < w.end
    assert w.key == at.astimezone(ZoneInfo(zone)).strftime(
        "%Y-%m-%d" if kind == "daily" else "%Y-%m"
    )
    length = w.end - w.start
    if kind == "daily":
        assert timedelta(hours=22) <= length <= timedelta(hours=26)  # Apia skipped a whole day once
    assert window_of(budget(timezone=zone, window=kind), w.end).start == w.end


def test_windows_need_an_aware_instant() -> None:
    with pytest.raises(BudgetError, match="aware"):
        window_of(budget(), datetime(2026, 1, 1))


# -- keys ----------------------------------------------------------------------------------


def test_every_key_of_a_tenant_carries_its_hash_tag() -> None:
    tenant = "org:eu/acme@prod.1"
    keys = [
        counter_key(tenant, "0123456789abcdef", "2026-11"),
        reservations_key(tenant),
        reservation_key(tenant, "r1"),
        done_key(tenant, "r1"),
    ]
    assert keys[0] == "soma:{org:eu/acme@prod.1}:bud:0123456789abcdef:2026-11"
    assert all(k.startswith("soma:{org:eu/acme@prod.1}:") for k in keys)
    assert len(set(keys)) == 4
    assert not counter_key("a", "b" * 16, "k").startswith("soma:{a:b}")


# -- charges, state, summary ---------------------------------------------------------------


def charge(**changes: Any) -> Charge:
    fields: dict[str, Any] = {
        "reservation_id": "r1",
        "tenant": "acme",
        "persona": "support",
        "model_id": "m",
        "occurred_at": NOW,
        "settled_at": NOW + timedelta(seconds=5),
        "tokens": 10,
        "cost_usd": Decimal("0.0000000011"),
        "gpu_ms": Decimal("0.0011"),
    }
    fields.update(changes)
    return Charge(**fields)


def test_charges_count_for_their_scope_window_and_reset() -> None:
    tenant_wide, persona = budget(), budget(persona="support")
    w = window_of(tenant_wide, NOW)
    assert charge().counts_for(tenant_wide, w, None) and charge().counts_for(persona, w, None)
    assert not charge(persona="sales").counts_for(persona, w, None)
    assert not charge(tenant="other").counts_for(tenant_wide, w, None)
    assert not charge(occurred_at=w.end).counts_for(tenant_wide, w, None)
    assert not charge().counts_for(tenant_wide, w, NOW + timedelta(seconds=5))
    assert charge().counts_for(tenant_wide, w, NOW + timedelta(seconds=4))


def test_window_totals_sum_each_charges_rounded_units() -> None:
    totals = WindowTotals.of([charge(reservation_id="a"), charge(reservation_id="b")])
    assert totals.cost_usd == Decimal("0.0000000022") and totals.gpu_ms == Decimal("0.0022")
    assert totals.units == Amounts(20, 4, 4)  # 2 x ceil(1.1), not ceil(2.2) = 3
    assert (totals + totals).charges == 4


def state(spent: Amounts, reserved: Amounts, **changes: Any) -> BudgetState:
    b = budget(**changes)
    return BudgetState(b, window_of(b, NOW), b.limits(), spent, reserved)


def test_state_remaining_is_floored_and_the_ratio_is_the_tightest() -> None:
    s = state(Amounts(900, 4 * 10**9, 0), Amounts(50, 10**9, 0), limit_tokens=1000)
    assert s.remaining == Limits(50, 5 * 10**9, None)
    assert s.remaining_ratio() == pytest.approx(0.05)
    over = state(Amounts(1200, 0, 0), Amounts(0, 0, 0), limit_tokens=1000)
    assert over.remaining.tokens == 0 and over.remaining_ratio() < 0
    text = tightest_remaining([s], Amounts(0, 250_000_000, 0))  # 0.25 USD not yet counted
    assert text == "0123456789abcdef daily 2026-11-22: tokens=50 usd=4.750000000"


def test_policy_doc_matches_the_policy_input_contract() -> None:
    s = state(
        Amounts(400, 0, 0),
        Amounts(100, 0, 0),
        limit_tokens=1000,
        limit_usd=None,
        approval_above_usd=Decimal("0.0000000015"),
    )
    assert s.policy_doc() == {
        "budget_id": "0123456789abcdef",
        "scope": "tenant",
        "persona": None,
        "window": "daily",
        "window_key": "2026-11-22",
        "resets_at": "2026-11-22T23:00:00Z",
        "on_exceed": "downgrade",
        "approval_above_usd_nano": 1,
        "limit": {"tokens": 1000, "usd_nano": None, "gpu_us": None},
        "spent": {"tokens": 400, "usd_nano": 0, "gpu_us": 0},
        "reserved": {"tokens": 100, "usd_nano": 0, "gpu_us": 0},
        "remaining": {"tokens": 500, "usd_nano": None, "gpu_us": None},
    }


def test_summary_burn_rate_and_projected_exhaustion() -> None:
    # Paris day 2026-11-22 started at 23:00 UTC the day before: 13 hours by NOW.
    s = state(Amounts(0, 0, 0), Amounts(0, 2 * 10**9, 0), limit_usd=Decimal("10"))
    exact = WindowTotals(
        charges=3,
        tokens=130,
        cost_usd=Decimal("3.25"),
        gpu_ms=Decimal(0),
        units=Amounts(130, 3_250_000_000, 0),
    )
    out = summarize(s, exact, None, NOW)
    assert out.exact and out.spent_usd == Decimal("3.25") and out.counted_since == s.window.start
    assert out.burn_usd_per_hour == Decimal("0.25")
    assert out.burn_tokens_per_hour == Decimal(10)
    assert out.remaining_usd == Decimal("4.75")  # 10 - 3.25 spent - 2 reserved
    assert out.projected_exhaustion == NOW + timedelta(hours=19)
    assert out.remaining_tokens is None and out.remaining_gpu_hours is None
    since = NOW - timedelta(hours=1)  # after a reset one hour ago, the same spend burns faster
    assert summarize(s, exact, since, NOW).burn_usd_per_hour == Decimal("3.25")
    idle = summarize(s, replace(exact, cost_usd=Decimal(0), tokens=0), None, NOW)
    assert idle.projected_exhaustion is None and idle.burn_usd_per_hour == 0
    from_counter = summarize(
        state(Amounts(5, 1, 0), Amounts(), limit_usd=Decimal(1)), None, None, NOW
    )
    assert not from_counter.exact and from_counter.spent_usd == Decimal("0.000000001")
    spent_out = summarize(
        state(Amounts(), Amounts(), limit_usd=Decimal(1)),
        replace(exact, cost_usd=Decimal(2)),
        None,
        NOW,
    )
    assert spent_out.projected_exhaustion == NOW and spent_out.remaining_usd == Decimal(-1)
