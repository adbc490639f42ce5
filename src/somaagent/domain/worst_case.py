"""The most one call can cost, known before it is made (pure).

A budget reservation must never be smaller than what the call can spend, so every figure
here is an upper bound, not an estimate:

* **Prompt tokens.** Both local models (and every catalog model) use byte-level BPE
  tokenizers: each token covers at least one byte of text, so a message's content can never
  be more tokens than its UTF-8 bytes. The chat template adds per message a fixed frame
  (``<|im_start|>role\\n`` ... ``<|im_end|>\\n``: two special tokens plus the role and two
  newlines) and once per prompt a default system prompt and the generation prompt;
  ``MESSAGE_OVERHEAD_TOKENS`` and ``PROMPT_OVERHEAD_TOKENS`` bound those generously (the
  test checks the bound against the models' own tokenizers).
* **Completion tokens.** ``max_tokens``, which the gateway always sends upstream.
* **GPU time.** For a self-hosted model priced by GPU time, the rate card's
  ``max_ms_per_token`` times the token bound; the gateway gives the upstream call a
  deadline below that bound, so the measured time cannot exceed it.
* **Money.** The rate card's price of those bounds (cached input priced as uncached, the
  higher price), rounded exactly like the real cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from somaagent.domain.pricing import call_cost
from somaagent.domain.routing import GpuPricing, Pricing

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "PROMPT_OVERHEAD_TOKENS",
    "WorstCase",
    "prompt_token_bound",
    "worst_case",
]

MESSAGE_OVERHEAD_TOKENS = 8
PROMPT_OVERHEAD_TOKENS = 64
_DEADLINE_MARGIN_MS = Decimal(50)


def _content_bytes(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode("utf-8", "surrogatepass"))
    if isinstance(content, list):
        return sum(
            len(p["text"].encode("utf-8", "surrogatepass")) + 1
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return 0


def prompt_token_bound(messages: Sequence[Mapping[str, Any]]) -> int:
    """An upper bound of the prompt's tokens once the chat template is applied."""
    total = PROMPT_OVERHEAD_TOKENS
    for m in messages:
        role = m.get("role")
        total += MESSAGE_OVERHEAD_TOKENS + (len(role.encode()) if isinstance(role, str) else 0)
        total += _content_bytes(m.get("content"))
        name = m.get("name")
        if isinstance(name, str):
            total += len(name.encode()) + 2
    return total


@dataclass(frozen=True, slots=True)
class WorstCase:
    """Upper bounds of one call on one model."""

    model_id: str
    prompt_tokens: int
    max_tokens: int
    usd: Decimal
    gpu_ms: Decimal  # 0 for models not priced by GPU time
    deadline_s: float | None  # the upstream call must end by then (GPU-priced models)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


def worst_case(
    *,
    model_id: str,
    pricing: Pricing,
    prompt_tokens: int,
    max_tokens: int,
    max_ms_per_token: Decimal | None,
    timeout_s: float,
) -> WorstCase:
    """The bounds of a call of at most ``prompt_tokens`` + ``max_tokens`` on this model."""
    tokens = prompt_tokens + max_tokens
    if isinstance(pricing, GpuPricing):
        timeout_ms = Decimal(repr(float(timeout_s))) * 1000
        per_token = max_ms_per_token if max_ms_per_token is not None else timeout_ms
        bound_ms = min(per_token * tokens, timeout_ms)
        usd = call_cost(
            pricing, input_tokens=0, output_tokens=0, cached_tokens=0, gpu_ms=float(bound_ms)
        )
        deadline = float(max(bound_ms - _DEADLINE_MARGIN_MS, Decimal(1)) / 1000)
        return WorstCase(model_id, prompt_tokens, max_tokens, usd, bound_ms, deadline)
    usd = call_cost(
        pricing,
        input_tokens=prompt_tokens,
        output_tokens=max_tokens,
        cached_tokens=0,
        gpu_ms=0.0,
    )
    return WorstCase(model_id, prompt_tokens, max_tokens, usd, Decimal(0), None)
