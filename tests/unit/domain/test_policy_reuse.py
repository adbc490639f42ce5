"""Reuse conditions of a policy verdict (pure): paths, lengths, integer comparisons."""

from __future__ import annotations

from typing import Any

import pytest

from somaagent.domain.policy import PolicyError, Verdict
from somaagent.domain.policy_reuse import Reuse, parse_decision, parse_reuse, value_at

VERDICT = {"action": "allow", "reasons": ["ok"], "model_id": "m", "retry_after": None}
RAW = {
    "ttl_s": 60,
    "equal": [["route", "model_id"], ["budgets", 0, "limit"]],
    "lengths": [["budgets"]],
    "at_most": [[["route", "wc"], ["budgets", 0, "remaining"]]],
}


def doc(model: str = "m", limit: int = 10, wc: Any = 3, remaining: Any = 5) -> dict[str, Any]:
    return {
        "route": {"model_id": model, "wc": wc},
        "budgets": [{"limit": {"tokens": limit}, "remaining": remaining}],
    }


def test_value_at_walks_keys_and_indexes() -> None:
    d = doc()
    assert value_at(d, ("budgets", 0, "limit", "tokens")) == 10
    assert value_at(d, ("budgets", 1)) is not None  # the missing marker, not a value
    assert value_at(d, ("budgets", 1)) == value_at(d, ("nope",))
    assert value_at(d, ("route", 0)) == value_at(d, ("nope",))  # an index into an object


def test_conditions() -> None:
    reuse = parse_reuse(RAW)
    assert isinstance(reuse, Reuse)
    captured = reuse.capture(doc())
    assert reuse.holds(captured, doc())
    assert reuse.holds(captured, doc(wc=5, remaining=5))  # a <= b at equality
    assert not reuse.holds(captured, doc(wc=6, remaining=5))
    assert not reuse.holds(captured, doc(model="other"))
    assert not reuse.holds(captured, doc(limit=11))
    assert not reuse.holds(captured, doc(remaining=None))  # no integer: no reuse
    assert not reuse.holds(captured, doc(wc=True))  # a bool is not an integer
    assert not reuse.holds(captured, doc(wc=-1))
    longer = doc()
    longer["budgets"].append({"limit": {}, "remaining": 0})
    assert not reuse.holds(captured, longer)


def test_a_path_missing_from_the_evaluated_input_never_matches() -> None:
    reuse = parse_reuse({**RAW, "equal": [["absent"]]})
    assert reuse is not None
    assert not reuse.holds(reuse.capture(doc()), doc())


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        {"equal": []},
        {**RAW, "ttl_s": -1},
        {**RAW, "ttl_s": True},
        {**RAW, "equal": "route"},
        {**RAW, "equal": [[]]},
        {**RAW, "equal": [["a", 1.5]]},
        {**RAW, "equal": [["a", False]]},
        {**RAW, "at_most": [[["a"]]]},
        {**RAW, "at_most": {}},
    ],
)
def test_malformed_reuse_is_a_policy_error(raw: Any) -> None:
    with pytest.raises(PolicyError):
        parse_reuse(raw)


def test_parse_decision() -> None:
    verdict, reuse = parse_decision({"verdict": VERDICT, "reuse": None})
    assert verdict == Verdict("allow", ("ok",), "m", None)
    assert reuse is None
    assert parse_decision({"verdict": VERDICT, "reuse": RAW})[1] is not None
    with pytest.raises(PolicyError, match="decision"):
        parse_decision(VERDICT)
