"""Verdict parsing and the policy input helpers (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from somaagent.domain.policy import (
    ACTIONS,
    Amounts,
    PolicyError,
    Verdict,
    budget_input,
    example_input,
    format_reset,
    nano_to_usd,
    parse_verdict,
    remaining_amounts,
    usd_to_nano,
)


def raw(**overrides: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "action": "allow",
        "reasons": ["within every budget: bud_1"],
        "model_id": "m",
        "retry_after": None,
    }
    result.update(overrides)
    return result


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_is_accepted(action: str) -> None:
    retry = "2026-11-23T05:00:00Z" if action == "pause" else None
    verdict = parse_verdict(raw(action=action, reasons=["a", "b"], retry_after=retry))
    assert verdict == Verdict(action, ("a", "b"), "m", retry)  # type: ignore[arg-type]
    assert verdict.to_dict() == raw(action=action, reasons=["a", "b"], retry_after=retry)


def test_actions_are_the_five_of_the_contract() -> None:
    assert set(ACTIONS) == {"allow", "downgrade", "pause", "require_approval", "deny"}


def test_a_pause_may_have_no_retry_time_and_a_deny_no_model() -> None:
    assert parse_verdict(raw(action="pause")).retry_after is None
    assert parse_verdict(raw(action="deny", model_id="")).model_id == ""


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (None, "not an object"),
        (["allow"], "not an object"),
        ("allow", "not an object"),
        ({}, "missing action, model_id, reasons, retry_after"),
        ({k: v for k, v in raw().items() if k != "reasons"}, "missing reasons"),
        (raw(extra=1), "unexpected extra"),
        (raw(action="permit"), "'action' is not one of allow, downgrade"),
        (raw(action=None), "'action' is not one of"),
        (raw(reasons="within budget"), "'reasons' is not a list"),
        (raw(reasons=None), "'reasons' is not a list"),
        (raw(reasons=[]), "'reasons' is empty"),
        (raw(reasons=["ok", 3]), "other than a non-empty string"),
        (raw(reasons=["ok", ""]), "other than a non-empty string"),
        (raw(model_id=None), "'model_id' is not a string"),
        (raw(model_id=7), "'model_id' is not a string"),
        (raw(model_id=""), "'model_id' is empty on a allow"),
        (raw(action="downgrade", model_id=""), "'model_id' is empty on a downgrade"),
        (raw(retry_after="2026-11-23T05:00:00Z"), "'retry_after' is set on a allow"),
        (raw(action="deny", retry_after="2026-11-23T05:00:00Z"), "set on a deny"),
        (raw(action="pause", retry_after=5), "neither null nor a string"),
        (raw(action="pause", retry_after="tomorrow"), "not an RFC 3339 timestamp"),
        (raw(action="pause", retry_after="2026-11-23T05:00:00"), "has no UTC offset"),
    ],
)
def test_malformed_results_are_rejected_with_the_reason(result: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_verdict(result)
    assert str(info.value).startswith("policy result is not a verdict: ")
    assert message in str(info.value)


def test_the_rejected_result_is_shown_but_bounded() -> None:
    with pytest.raises(PolicyError) as info:
        parse_verdict(raw(action="x" * 1000))
    assert "got {'action': 'xxx" in str(info.value)
    assert len(str(info.value)) < 400


def test_usd_to_nano_rounds_up_exactly() -> None:
    assert usd_to_nano(Decimal("0.000008334")) == 8334
    assert usd_to_nano(Decimal("0.000008334000000001")) == 8335
    assert usd_to_nano(Decimal(0)) == 0
    assert usd_to_nano(Decimal("1e-18")) == 1
    big = Decimal("12345678901234567890.123456789000000001")
    assert usd_to_nano(big) == 12345678901234567890123456790
    assert nano_to_usd(12345678901234567890123456789) == Decimal("12345678901234567890.123456789")
    assert nano_to_usd(usd_to_nano(Decimal("0.25"))) == Decimal("0.25")


@pytest.mark.parametrize("bad", [Decimal(-1), Decimal("NaN"), Decimal("Infinity")])
def test_usd_to_nano_rejects_amounts_that_are_not_money(bad: Decimal) -> None:
    with pytest.raises(ValueError):
        usd_to_nano(bad)


def test_usd_to_nano_refuses_floats() -> None:
    with pytest.raises(TypeError, match="Decimal, not float"):
        usd_to_nano(0.1)  # type: ignore[arg-type]


def amounts(tokens: int | None, usd: int | None, gpu: int | None) -> Amounts:
    return {"tokens": tokens, "usd_nano": usd, "gpu_us": gpu}


def test_remaining_is_floored_at_zero_and_none_when_unlimited() -> None:
    left = remaining_amounts(amounts(1000, 50, None), amounts(400, 60, 9), amounts(100, 0, 9))
    assert left == amounts(500, 0, None)
    assert remaining_amounts(amounts(10, 10, 10), amounts(None, 3, 0), amounts(0, None, 11)) == (
        amounts(10, 7, 0)
    )


def test_format_reset_is_utc_to_the_second_rounded_up() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_reset(datetime(2026, 11, 23, 6, 0, tzinfo=paris)) == "2026-11-23T05:00:00Z"
    moment = datetime(2026, 11, 23, 4, 59, 59, 1, tzinfo=UTC)
    assert format_reset(moment) == "2026-11-23T05:00:00Z"
    with pytest.raises(ValueError, match="UTC offset"):
        format_reset(datetime(2026, 11, 23))


def test_format_reset_is_the_strftime_text_it_replaced() -> None:
    rng = random.Random(7)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(5000):
        offset = timezone(timedelta(minutes=rng.randint(-720, 720)))
        moment = (start + timedelta(seconds=rng.randint(0, 4 * 10**9))).astimezone(offset)
        moment = moment.replace(microsecond=rng.choice([0, rng.randint(1, 999_999)]))
        utc = moment.astimezone(UTC)
        if utc.microsecond:
            utc = utc.replace(microsecond=0) + timedelta(seconds=1)
        assert format_reset(moment) == utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_budget_input_derives_remaining_and_formats_the_reset() -> None:
    budget = budget_input(
        budget_id="bud_1",
        scope="persona",
        persona="support",
        window="daily",
        window_key="2026-11-22",
        resets_at=datetime(2026, 11, 23, 5, tzinfo=UTC),
        on_exceed="pause",
        limit=amounts(1000, None, 5),
        spent=amounts(400, 7, 2),
        reserved=amounts(100, 0, 4),
        approval_above_usd_nano=20_000,
    )
    assert budget["remaining"] == amounts(500, None, 0)
    assert budget["resets_at"] == "2026-11-23T05:00:00Z"
    assert budget["approval_above_usd_nano"] == 20_000
    assert budget["limit"] == amounts(1000, None, 5)


@pytest.mark.parametrize(
    ("on_exceed", "spent"),
    [("explode", amounts(0, 0, 0)), ("pause", amounts(-1, 0, 0)), ("pause", amounts(True, 0, 0))],
)
def test_budget_input_refuses_what_the_policy_would_reject(on_exceed: Any, spent: Amounts) -> None:
    with pytest.raises(ValueError):
        budget_input(
            budget_id="b",
            scope="tenant",
            persona=None,
            window="daily",
            window_key="k",
            resets_at=None,
            on_exceed=on_exceed,
            limit=amounts(1, 1, 1),
            spent=spent,
            reserved=amounts(0, 0, 0),
        )


def test_example_input_is_a_fresh_copy_each_time() -> None:
    first = example_input()
    first["budgets"].clear()
    assert len(example_input()["budgets"]) == 1
    assert {c["model_id"] for c in first["route"]["candidates"]} >= {first["route"]["model_id"]}
