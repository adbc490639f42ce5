"""What an upstream reports is taken only when it is a count or a duration (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from somaagent.adapters.upstream._types import Measurements, compute_ms, reported_usage
from somaagent.service.call_records import gpu_ms_of


def usage(prompt: Any, completion: Any, cached: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached}
    return body


def test_well_formed_usage_is_taken_as_it_is() -> None:
    got = reported_usage(usage(412, 96, 64), None)
    assert got is not None
    assert (got.prompt_tokens, got.completion_tokens, got.cached_tokens) == (412, 96, 64)
    timings = {"prompt_n": 3, "cache_n": 30, "predicted_n": 8}
    got = reported_usage(None, timings)
    assert got is not None and (got.prompt_tokens, got.completion_tokens) == (33, 8)


@pytest.mark.parametrize(
    "bad",
    [usage(-5, 96), usage(412, -1), usage(412.0, 96), usage(True, 96), usage("412", 96)],
    ids=["negative prompt", "negative completion", "float", "bool", "string"],
)
def test_usage_that_is_no_count_is_not_taken(bad: dict[str, Any]) -> None:
    # Then the tokens are counted with the model's tokenizer (usage_source=counted).
    assert reported_usage(bad, None) is None
    assert reported_usage(None, {"prompt_n": -1, "predicted_n": 8}) is None


def test_more_cached_than_prompt_tokens_is_priced_as_uncached() -> None:
    got = reported_usage(usage(100, 10, 150), None)
    assert got is not None and got.cached_tokens is None
    got = reported_usage(usage(100, 10, -3), None)
    assert got is not None and got.cached_tokens is None


def test_a_compute_time_is_a_finite_non_negative_duration_within_the_call() -> None:
    assert compute_ms({"prompt_ms": 12.5, "predicted_ms": 80}) == 92.5
    for bad in (
        {"prompt_ms": -1, "predicted_ms": 80},
        {"prompt_ms": float("inf"), "predicted_ms": 1},
    ):
        assert compute_ms(bad) is None

    def measured(compute: float | None, wall: float) -> Measurements:
        return Measurements(
            latency_ms=wall, time_to_first_token_ms=None, queue_delay_ms=None,
            compute_ms=compute, cached_tokens=None, finish_reason="stop", model=None,
        )  # fmt: skip

    assert gpu_ms_of(measured(92.5, 100.0)) == 92.5
    assert gpu_ms_of(measured(None, 100.0)) == 100.0
    assert gpu_ms_of(measured(3_600_000.0, 100.0)) == 100.0  # an hour reported for 0.1 s
