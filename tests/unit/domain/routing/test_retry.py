"""Which upstream failures are tried again on the same upstream, and when."""

from __future__ import annotations

import pytest

from somaagent.domain.routing.retry import RetryPolicy


@pytest.mark.parametrize(
    ("kind", "status", "retried"),
    [
        ("connect", None, True),
        ("http", 503, True),
        ("http", 500, True),
        ("http", 429, True),
        ("http", 408, True),
        ("http", 400, False),
        ("http", 404, False),
        ("http", 409, False),
        ("timeout", None, False),
        ("protocol", None, False),
    ],
)
def test_only_failures_that_may_pass_are_retried(
    kind: str, status: int | None, retried: bool
) -> None:
    assert (RetryPolicy().delay(kind, status, 1) is not None) is retried


def test_the_back_off_doubles_up_to_its_cap_and_the_tries_are_counted() -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.25, max_backoff_s=1.0)
    assert [policy.delay("connect", None, n) for n in range(1, 7)] == [
        0.25,
        0.5,
        1.0,
        1.0,
        1.0,
        None,
    ]
    assert RetryPolicy(retries=0).delay("connect", None, 1) is None
    assert RetryPolicy().delay("connect", None, 0) is None


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=11)
    with pytest.raises(ValueError, match="backoff_s"):
        RetryPolicy(backoff_s=3.0, max_backoff_s=2.0)
