"""Build the telemetry events of one gateway call (one per upstream attempt that ran).

Primary and SLM tier calls are ``slm.metrics``; escalation tier calls are
``llm.escalation.invocation``; each request also yields one ``conversation.metrics``.
Prompts and completions never appear: only their sha256 and lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import msgspec.inspect as mi

from somaagent.domain.chat_request import ChatRequest
from somaagent.domain.events import (
    SCHEMA_VERSION,
    ConversationMetrics,
    EscalationInvocation,
    Event,
    Money,
    SlmMetrics,
    new_event_id,
    utc_now_iso,
)
from somaagent.domain.identity import RequestContext
from somaagent.domain.routing import ModelEntry

__all__ = ["CallRecord", "call_event", "conversation_event"]

Status = Literal["ok", "error", "fallback", "interrupted"]


@dataclass(slots=True)
class CallRecord:
    """What one upstream attempt did, as measured by the gateway."""

    entry: ModelEntry
    status: Status
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    usage_source: Literal["reported", "counted"] = "reported"
    latency_ms: float = 0.0
    time_to_first_token_ms: float | None = None
    queue_delay_ms: float = 0.0
    gpu_ms: float = 0.0
    cost_usd: Decimal = field(default_factory=Decimal)
    rate_card_version: str = "unpriced"  # the version its cost was computed with
    completion_chars: int = 0
    streamed: bool = False
    error_code: str | None = None
    decision_reason: str = "default"
    escalated: bool = False
    source_snapshot: dict[str, Any] | None = None


def _envelope(ctx: RequestContext, producer: str) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "schema_version": SCHEMA_VERSION,
        "occurred_at": utc_now_iso(),
        **ctx.envelope_fields(),
        "producer": producer,
    }


def _literal_values(cls: type, name: str) -> frozenset[str]:
    """The allowed values of a ``Literal`` field of an event contract."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    field_type = next(f.type for f in info.fields if f.name == name)
    if isinstance(field_type, mi.Metadata):
        field_type = field_type.type
    assert isinstance(field_type, mi.LiteralType)
    return frozenset(str(v) for v in field_type.values)


_ESCALATION_REASONS = _literal_values(EscalationInvocation, "decision_reason")


def call_event(
    record: CallRecord,
    *,
    ctx: RequestContext,
    request: ChatRequest,
    decision_tree: dict[str, Any],
    deployment_mode: str,
    producer: str,
) -> Event:
    """The model-usage event of one attempt."""
    common: dict[str, Any] = {
        **_envelope(ctx, producer),
        "model_id": record.entry.model_id,
        "model_revision": record.entry.revision,
        "deployment_mode": deployment_mode,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "total_tokens": record.input_tokens + record.output_tokens,
        "cached_tokens": min(record.cached_tokens, record.input_tokens),
        "usage_source": record.usage_source,
        "latency_ms": round(record.latency_ms, 3),
        "time_to_first_token_ms": (
            round(record.time_to_first_token_ms, 3)
            if record.time_to_first_token_ms is not None
            else None
        ),
        "queue_delay_ms": round(record.queue_delay_ms, 3),
        "gpu_ms": round(record.gpu_ms, 3),
        "temperature": request.temperature,
        "streamed": record.streamed,
        "error_code": record.error_code,
        "cost_usd": Money(record.cost_usd),
        "rate_card_version": record.rate_card_version,
        "prompt_hash": request.prompt_hash,
        "prompt_chars": request.prompt_chars,
        "completion_chars": record.completion_chars,
        "decision_tree": decision_tree,
        "safety_filters": [],
    }
    if record.entry.tier != "escalation":
        return SlmMetrics(**common, tier=record.entry.tier, status=record.status)
    reason = (
        record.decision_reason if record.decision_reason in _ESCALATION_REASONS else "requested"
    )
    outcome = {"ok": "success", "fallback": "fallback"}.get(record.status, "error")
    return EscalationInvocation(
        **common,
        base_url=record.entry.base_url or "http://unknown",
        decision_reason=reason,  # type: ignore[arg-type]
        source_slm_snapshot=record.source_snapshot,
        router_metadata={"escalated": record.escalated, "tier": record.entry.tier},
        outcome=outcome,  # type: ignore[arg-type]
    )


def conversation_event(
    *,
    ctx: RequestContext,
    request: ChatRequest,
    model_id: str,
    streaming_duration_ms: float,
    requeues: int,
    interrupted: bool,
    failed: bool,
    producer: str,
) -> ConversationMetrics:
    """One per request: the conversation's turn number (user messages so far) and what
    happened to this turn (streaming time, requeues to another model, interrupts)."""
    status = "interrupted" if interrupted else ("failed" if failed else "completed")
    return ConversationMetrics(
        **_envelope(ctx, producer),
        model_id=model_id,
        turn_count=max(1, request.user_turns),
        streaming_duration_ms=round(streaming_duration_ms, 3),
        requeue_count=requeues,
        interrupt_count=int(interrupted),
        status=status,  # type: ignore[arg-type]
    )
