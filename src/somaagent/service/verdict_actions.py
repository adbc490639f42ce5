"""What an enforced verdict does to a request: the downgrade target, the refusals, and the
approvals queue (contract in docs/decisions.md, "Approvals contract"). The queue's Postgres
calls run in a worker thread, off the event loop."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import partial

import anyio.to_thread

from somaagent.adapters.approvals import Approval, ApprovalError, ApprovalStore
from somaagent.domain.chat_request import RequestError
from somaagent.domain.events import SCHEMA_VERSION, Event, PolicyEvent, new_event_id, utc_now_iso
from somaagent.domain.identity import Caller, RequestContext
from somaagent.domain.policy import Verdict
from somaagent.domain.routing import ModelEntry

__all__ = [
    "claim_approval",
    "downgrade_target",
    "presented_approval",
    "queue_approval",
    "refusal",
    "retry_after_header",
    "verdict_event",
]


def downgrade_target(verdict: Verdict, models: Mapping[str, ModelEntry]) -> ModelEntry:
    """The live model a ``downgrade`` names (a 503 if the policy names one that is not)."""
    target = models.get(verdict.model_id)
    if target is None:
        raise RequestError(
            503,
            f"the policy downgraded to {verdict.model_id!r}, which is not live",
            code="policy_error",
            kind="server_error",
        )
    return target


def retry_after_header(retry_after: str | None, now: datetime) -> dict[str, str]:
    """``Retry-After`` in whole seconds (rounded up) until the policy's ``retry_after``."""
    if not retry_after:
        return {}
    try:
        at = datetime.fromisoformat(retry_after.replace("Z", "+00:00"))
    except ValueError:
        return {}
    return {"retry-after": str(max(1, int((at - now).total_seconds()) + 1))}


def refusal(verdict: Verdict, now: datetime) -> RequestError:
    """The error of a ``pause`` (429 with ``Retry-After``) or a ``deny`` (403)."""
    reasons = "; ".join(verdict.reasons)
    if verdict.action == "pause":
        return RequestError(
            429,
            f"paused by budget policy until {verdict.retry_after}: {reasons}",
            code="budget_paused",
            kind="rate_limit_error",
            headers=retry_after_header(verdict.retry_after, now),
        )
    return RequestError(
        403, f"denied by policy: {reasons}", code="policy_denied", kind="permission_error"
    )


async def queue_approval(
    store: ApprovalStore | None,
    verdict: Verdict,
    *,
    caller: Caller,
    ctx: RequestContext,
    model_id: str,
    prompt_hash: str,
    max_tokens: int,
    worst_case_usd: Decimal,
    ttl_s: float,
) -> RequestError:
    """Queue a pending approval; the 403 that tells the client how to poll and resend."""
    reasons = "; ".join(verdict.reasons)
    if store is None:
        return RequestError(
            403, f"approval required but no approvals queue: {reasons}", code="approval_required"
        )
    row = await anyio.to_thread.run_sync(
        partial(
            store.create,
            tenant=caller.tenant,
            persona=caller.persona,
            role=caller.role,
            model_id=model_id,
            prompt_hash=prompt_hash,
            max_tokens=max_tokens,
            worst_case_usd=worst_case_usd,
            reasons=verdict.reasons,
            budget_trace_id=ctx.budget_trace_id,
            ttl_s=ttl_s,
        )
    )
    return RequestError(
        403,
        f"this request needs an operator's approval ({row.approval_id}): {reasons}."
        f" Poll GET /v1/approvals/{row.approval_id}; once approved, send the same"
        f" request again with the header X-Soma-Approval: {row.approval_id}",
        code="approval_required",
        kind="permission_error",
        headers={"x-soma-approval-id": row.approval_id},
        extra={"approval_id": row.approval_id, "poll_url": f"/v1/approvals/{row.approval_id}"},
    )


async def presented_approval(
    store: ApprovalStore | None, approval_id: str, caller: Caller, prompt_hash: str
) -> Approval:
    """The approved approval a request presents (``X-Soma-Approval``), or a 4xx saying why
    it cannot be used (another tenant's reads as unknown)."""
    if store is None:
        raise RequestError(400, "this gateway has no approvals queue", param="X-Soma-Approval")
    row = await anyio.to_thread.run_sync(store.get, approval_id)
    if row is None or row.tenant != caller.tenant:
        raise RequestError(404, f"no approval {approval_id!r}", code="approval_not_found")
    if row.prompt_hash != prompt_hash:
        raise RequestError(
            409,
            f"approval {approval_id} was granted for a different prompt",
            code="approval_mismatch",
        )
    if row.status != "approved":
        raise RequestError(
            409,
            f"approval {approval_id} is {row.status}, not approved",
            code="approval_not_approved",
        )
    return row


async def claim_approval(
    store: ApprovalStore | None, approval: Approval, caller: Caller, prompt_hash: str
) -> None:
    """Mark the approval used (exactly once); a 409 when another request used it first."""
    assert store is not None
    try:
        await anyio.to_thread.run_sync(
            partial(
                store.claim, approval.approval_id, tenant=caller.tenant, prompt_hash=prompt_hash
            )
        )
    except ApprovalError as exc:
        raise RequestError(409, str(exc), code="approval_not_approved") from None


def verdict_event(
    ctx: RequestContext,
    verdict: Verdict,
    *,
    producer: str,
    policy_version: str,
    constitution_hash: str,
    blocked: bool,
    overridden: bool,
    latency_ms: float,
) -> Event:
    """The ``policy.events`` event of one verdict (``blocked``: it refused the request;
    ``overridden``: permissive mode let through what it would have refused)."""
    return PolicyEvent(
        event_id=new_event_id(),
        schema_version=SCHEMA_VERSION,
        occurred_at=utc_now_iso(),
        **ctx.envelope_fields(),
        producer=producer,
        model_id=verdict.model_id,
        action="model_call",
        verdict=verdict.action,
        reasons=list(verdict.reasons)[:32],
        blocked=blocked,
        overridden=overridden,
        policy_latency_ms=round(latency_ms, 3),
        policy_version=policy_version,
        constitution_hash=constitution_hash,
    )
