"""The rate-limit domain: limits' bounds, the answer's headers and the refusals."""

from __future__ import annotations

import pytest

from somaagent.domain.rate_limits import (
    MAX_LIMIT,
    RateDecision,
    RateLimits,
    check_limit,
    rate_headers,
    rate_refusal,
    tightest_headers,
)


@pytest.mark.parametrize("bad", [0, -1, MAX_LIMIT + 1, True, 2.0, "5"])
def test_a_limit_is_a_whole_number_from_1(bad: object) -> None:
    with pytest.raises(ValueError, match="must be an integer from 1 to"):
        check_limit("rpm", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateLimits(tpm=bad)  # type: ignore[arg-type]


def test_no_limit_at_all_is_nothing_to_check() -> None:
    assert RateLimits.of(None, None) is None
    assert RateLimits.of(5, None) == RateLimits(rpm=5)
    assert check_limit("rpm", None) is None and check_limit("rpm", MAX_LIMIT) == MAX_LIMIT


def test_headers_name_only_the_limited_dimensions() -> None:
    admitted = RateDecision("admitted", requests_left=4, tokens_left=None)
    assert rate_headers(RateLimits(rpm=5), admitted) == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
    }
    both = RateDecision("admitted", requests_left=0, tokens_left=-30)  # settled above its hold
    assert rate_headers(RateLimits(rpm=5, tpm=100), both)["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("retry_ms", "after", "reset"),
    [(1, "1", "1ms"), (999, "1", "999ms"), (1000, "1", "1s"), (1001, "2", "2s"),
     (59_999, "60", "1m0s"), (61_500, "62", "1m2s")],
)  # fmt: skip
def test_a_429_says_when_to_come_back(retry_ms: int, after: str, reset: str) -> None:
    decision = RateDecision("requests", retry_ms=retry_ms, requests_left=0)
    error = rate_refusal(RateLimits(rpm=5), decision, 0)
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.kind == "rate_limit_error"
    assert error.headers["retry-after"] == after
    assert error.headers["retry-after-ms"] == str(retry_ms)
    assert error.headers["x-ratelimit-reset-requests"] == reset
    assert "5 requests per minute" in error.message


def test_the_tokens_limit_names_the_request_worst_case() -> None:
    decision = RateDecision("tokens", retry_ms=1000, tokens_left=200)
    error = rate_refusal(RateLimits(tpm=1000), decision, 350)
    assert error.status == 429
    assert "1000 tokens per minute (this request may use 350)" in error.message
    assert error.headers["x-ratelimit-remaining-tokens"] == "200"
    assert error.headers["x-ratelimit-reset-tokens"] == "1s"


def test_a_request_that_can_never_fit_is_a_400_without_retry() -> None:
    decision = RateDecision("too_large", tokens_left=1000)
    error = rate_refusal(RateLimits(tpm=1000), decision, 4096)
    assert error.status == 400 and error.code == "request_too_large"
    assert error.param == "max_tokens"
    assert "up to 4096 tokens" in error.message and "limit of 1000" in error.message
    assert "retry-after" not in error.headers


def test_a_refusal_names_the_tenant_whose_limit_it_was() -> None:
    error = rate_refusal(RateLimits(rpm=3), RateDecision("requests", retry_ms=2500), 0, "acme")
    assert error.message == (
        "rate limit reached for tenant acme: 3 requests per minute; retry in 2.500 s"
    )
    big = rate_refusal(RateLimits(tpm=50), RateDecision("too_large"), 90, "acme")
    assert "more than tenant acme's limit of 50 tokens per minute" in big.message
    keys = rate_refusal(RateLimits(tpm=50), RateDecision("too_large"), 90)
    assert "the key's limit of 50" in keys.message


def test_several_scopes_show_the_tightest_per_dimension() -> None:
    key = (
        RateLimits(rpm=10, tpm=5_000),
        RateDecision("admitted", requests_left=9, tokens_left=4_000),
    )
    tenant = (RateLimits(rpm=4), RateDecision("admitted", requests_left=3))
    assert tightest_headers([key, tenant]) == {
        "x-ratelimit-limit-requests": "4",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-limit-tokens": "5000",
        "x-ratelimit-remaining-tokens": "4000",
    }
    assert tightest_headers([key]) == rate_headers(*key)
