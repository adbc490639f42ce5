"""The priced record of each upstream attempt, its span attributes and its Prometheus
figures (functions over explicit inputs; ``ChatService`` calls them)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from somaagent.adapters.upstream import Measurements, UpstreamError, Usage
from somaagent.domain.chat_request import ChatRequest, RequestError
from somaagent.domain.identity import Caller
from somaagent.domain.pricing import call_cost
from somaagent.domain.ratecards import RateBook
from somaagent.domain.routing import GpuPricing, ModelEntry
from somaagent.observability import GatewayMetrics
from somaagent.service.call_events import CallRecord

__all__ = [
    "failed_record",
    "gpu_ms_of",
    "observe_calls",
    "ok_record",
    "price",
    "span_attributes",
    "span_results",
]


def gpu_ms_of(measurements: Measurements) -> float:
    """The upstream's own compute time when it reports it, else measured wall time. Never
    more than the wall time: the upstream's work happened inside the call, so a larger
    figure is the upstream's error, and would be billed as GPU time."""
    value = measurements.compute_ms
    wall = measurements.latency_ms
    return round(wall if value is None else min(value, wall), 3)


def price(rates: RateBook, entry: ModelEntry, usage: Usage, gpu_ms: float) -> tuple[Decimal, str]:
    """The call's exact cost and the rate-card version it was priced with."""
    card = rates.current(entry.model_id, datetime.now(UTC))
    if card is None:
        raise RequestError(
            503,
            f"no rate card prices {entry.model_id!r}; load one with `soma ratecards load`",
            code="no_rate_card",
            kind="server_error",
        )
    cost = call_cost(
        card.pricing,
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens or 0,
        gpu_ms=gpu_ms,
    )
    return cost, card.version


def ok_record(
    rates: RateBook,
    entry: ModelEntry,
    usage: Usage,
    measurements: Measurements,
    *,
    queue_delay_ms: float,
    reason: str,
) -> CallRecord:
    """The priced record of an attempt that answered."""
    gpu = gpu_ms_of(measurements)
    cost, version = price(rates, entry, usage, gpu)
    return CallRecord(
        entry=entry,
        status="ok",
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens or 0,
        usage_source=usage.source,
        latency_ms=measurements.latency_ms,
        queue_delay_ms=queue_delay_ms,
        gpu_ms=gpu,
        cost_usd=cost,
        rate_card_version=version,
        decision_reason=reason,
        escalated=entry.tier == "escalation",
    )


def failed_record(
    rates: RateBook,
    entry: ModelEntry,
    exc: UpstreamError,
    *,
    elapsed_ms: float,
    timeout_s: float,
    queue_delay_ms: float,
    reason: str,
) -> CallRecord:
    """The record of a failed attempt.

    A call that timed out kept a self-hosted model busy until it was cancelled: its wall
    time, at most the call's timeout, is charged as GPU time (at the GPU price; nothing for a
    token-priced model).
    """
    card = rates.current(entry.model_id, datetime.now(UTC))
    gpu = round(min(elapsed_ms, timeout_s * 1000), 3) if exc.kind == "timeout" else 0.0
    cost = Decimal(0)
    if card is not None and isinstance(card.pricing, GpuPricing):
        cost = call_cost(card.pricing, input_tokens=0, output_tokens=0, cached_tokens=0, gpu_ms=gpu)
    else:
        gpu = 0.0
    return CallRecord(
        entry=entry,
        status="error",
        rate_card_version=card.version if card else "unpriced",
        usage_source="counted",
        gpu_ms=gpu,
        cost_usd=cost,
        latency_ms=elapsed_ms,
        queue_delay_ms=queue_delay_ms,
        error_code=f"upstream_{exc.kind}" + (f"_{exc.status}" if exc.status else ""),
        decision_reason=reason,
        escalated=entry.tier == "escalation",
    )


def span_attributes(entry: ModelEntry, request: ChatRequest) -> dict[str, Any]:
    """GenAI semantic-convention attributes of an upstream call span (no prompt)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "llama.cpp" if "local" in entry.tags else "openai",
        "gen_ai.request.model": entry.model_id,
        "gen_ai.request.max_tokens": request.max_tokens,
        "soma.tier": entry.tier,
        "server.address": entry.base_url or "",
    }
    if request.temperature is not None:
        attrs["gen_ai.request.temperature"] = request.temperature
    return attrs


def span_results(record: CallRecord) -> dict[str, Any]:
    """What an attempt's span records once it ended (usage, cost; ``__`` spells a dot)."""
    return {
        "gen_ai__response__model": record.entry.model_id,
        "gen_ai__usage__input_tokens": record.input_tokens,
        "gen_ai__usage__output_tokens": record.output_tokens,
        "soma__cost_usd": f"{record.cost_usd:f}",
        "soma__usage_source": record.usage_source,
        "soma__gpu_ms": record.gpu_ms,
    }


def observe_calls(metrics: GatewayMetrics, records: list[CallRecord], caller: Caller) -> None:
    """Prometheus figures of a request's attempts (bounded labels; no ids)."""
    for i, r in enumerate(records):
        ttft = r.time_to_first_token_ms
        metrics.record_call(
            tenant=caller.tenant,
            persona=caller.persona,
            model=r.entry.model_id,
            tier=r.entry.tier,
            status=r.status,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            duration_s=r.latency_ms / 1000,
            cost_usd=r.cost_usd,
            ttft_s=ttft / 1000 if ttft is not None else None,
            error_type=r.error_code,
        )
        if r.escalated and r.status == "ok":
            metrics.record_escalation(r.decision_reason)
        if r.status in ("error", "fallback") and i + 1 < len(records):
            metrics.record_fallback(r.entry.model_id, records[i + 1].entry.model_id)
