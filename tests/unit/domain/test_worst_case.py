"""Upper bounds of a call before it is made (the counted-vs-bound check against the real
tokenizers lives in tests/e2e/test_budgets_gateway.py)."""

from __future__ import annotations

from decimal import Decimal

from somaagent.domain.pricing import call_cost
from somaagent.domain.routing import GpuPricing, TokenPricing
from somaagent.domain.worst_case import (
    MESSAGE_OVERHEAD_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    prompt_token_bound,
    worst_case,
)

TOKENS = TokenPricing(Decimal("0.0006"), Decimal("0.0012"), Decimal("0.0003"))
GPU = GpuPricing(Decimal("0.10"), 1)


def test_prompt_bound_counts_utf8_bytes_and_frames() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "héllo 🌍"},
    ]
    expected = (
        PROMPT_OVERHEAD_TOKENS
        + 2 * MESSAGE_OVERHEAD_TOKENS
        + len("system")
        + len("user")
        + len(b"Be brief.")
        + len("héllo 🌍".encode())
    )
    assert prompt_token_bound(messages) == expected


def test_prompt_bound_counts_text_parts_and_ignores_other_parts() -> None:
    parts = [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "x"}}]
    bound = prompt_token_bound([{"role": "user", "content": parts}])
    assert bound == PROMPT_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS + 4 + 3 + 1


def test_token_priced_worst_case_prices_prompt_and_max_tokens_uncached() -> None:
    w = worst_case(
        model_id="m",
        pricing=TOKENS,
        prompt_tokens=100,
        max_tokens=50,
        max_ms_per_token=None,
        timeout_s=120,
    )
    assert w.tokens == 150
    assert w.usd == call_cost(TOKENS, input_tokens=100, output_tokens=50, cached_tokens=0, gpu_ms=0)
    assert w.gpu_ms == 0 and w.deadline_s is None


def test_gpu_priced_worst_case_bounds_time_and_sets_a_deadline_inside_it() -> None:
    w = worst_case(
        model_id="m",
        pricing=GPU,
        prompt_tokens=100,
        max_tokens=50,
        max_ms_per_token=Decimal("250"),
        timeout_s=120,
    )
    assert w.gpu_ms == Decimal(37_500)
    assert w.usd == call_cost(GPU, input_tokens=0, output_tokens=0, cached_tokens=0, gpu_ms=37_500)
    assert w.deadline_s is not None and w.deadline_s < 37.5
    # any call that ends by its deadline costs at most the reserved amount
    actual = call_cost(
        GPU, input_tokens=0, output_tokens=0, cached_tokens=0, gpu_ms=w.deadline_s * 1000
    )
    assert actual <= w.usd


def test_gpu_bound_never_exceeds_the_upstream_timeout() -> None:
    w = worst_case(
        model_id="m",
        pricing=GPU,
        prompt_tokens=10_000,
        max_tokens=4096,
        max_ms_per_token=Decimal("500"),
        timeout_s=30,
    )
    assert w.gpu_ms == Decimal(30_000)
    assert w.deadline_s is not None and w.deadline_s <= 30
