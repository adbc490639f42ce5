"""The escalation notice: what an escalated call cost beyond the primary model (estimate).

``escalated to <model>: +<USD> USD est.`` goes into the ``x-soma-escalation-notice`` header
and the event's decision tree. The escalated call's cost is exact; the primary's is an
estimate of the same tokens on the cheapest live primary model: its token price when it
has one, else its GPU price times its last-24h GPU ms per token (or, with no history yet,
the escalated call's own GPU ms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from somaagent.domain.pricing import call_cost
from somaagent.domain.ratecards import RateBook
from somaagent.domain.routing import GpuPricing, ModelEntry, ModelStats
from somaagent.service.call_events import CallRecord

__all__ = ["escalation_notice", "format_usd_delta"]

_QUANTUM = Decimal("1e-9")


def format_usd_delta(delta: Decimal) -> str:
    """``+0.000004`` / ``-0.0012``: signed, at most nine decimals, no exponent."""
    q = delta.quantize(_QUANTUM)
    text = format(q.normalize(), "f") if q else "0"
    return text if text.startswith("-") else "+" + text


def escalation_notice(
    record: CallRecord,
    *,
    primaries: Sequence[ModelEntry],
    rates: RateBook,
    stats: Mapping[str, ModelStats],
    at: datetime | None = None,
) -> str | None:
    """The notice for an escalated ``record``, or None when no primary can be priced."""
    at = at or datetime.now(UTC)
    tokens = record.input_tokens + record.output_tokens
    estimates: list[Decimal] = []
    for entry in primaries:
        card = rates.current(entry.model_id, at)
        if card is None:
            continue
        gpu_ms = record.gpu_ms
        if isinstance(card.pricing, GpuPricing):
            per_token = stats.get(entry.model_id)
            if per_token is not None and per_token.gpu_ms_per_token is not None:
                gpu_ms = round(per_token.gpu_ms_per_token * tokens, 3)
        estimates.append(
            call_cost(
                card.pricing,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                cached_tokens=record.cached_tokens,
                gpu_ms=gpu_ms,
            )
        )
    if not estimates:
        return None
    delta = record.cost_usd - min(estimates)
    return f"escalated to {record.entry.model_id}: {format_usd_delta(delta)} USD est."
