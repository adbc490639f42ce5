"""Build the policy input document of one model call (pure; contract in ``domain.policy``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from somaagent.domain.budgets import Amounts, BudgetState, usd_to_nano_floor
from somaagent.domain.chat_request import ChatRequest
from somaagent.domain.identity import Caller, RequestContext
from somaagent.domain.policy import Amounts as AmountsDoc
from somaagent.domain.policy import (
    ApprovalInput,
    BudgetInput,
    Candidate,
    PolicyInput,
    budget_input,
)
from somaagent.domain.routing import Decision, ModelEntry

__all__ = ["ApprovalView", "policy_input"]


class ApprovalView(Protocol):
    """The fields of an approval the policy sees (adapters' rows satisfy it)."""

    @property
    def approval_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def prompt_hash(self) -> str: ...
    @property
    def model_id(self) -> str: ...


def _doc(amounts: Amounts) -> AmountsDoc:
    return {"tokens": amounts.tokens, "usd_nano": amounts.usd_nano, "gpu_us": amounts.gpu_us}


def _budget(state: BudgetState) -> BudgetInput:
    b, limits = state.budget, state.limits
    return budget_input(
        budget_id=b.budget_id,
        scope="tenant" if b.persona is None else "persona",
        persona=b.persona,
        window=b.window,
        window_key=state.window.key,
        resets_at=state.window.end,
        on_exceed=b.on_exceed,
        limit={"tokens": limits.tokens, "usd_nano": limits.usd_nano, "gpu_us": limits.gpu_us},
        spent=_doc(state.spent),
        reserved=_doc(state.reserved),
        approval_above_usd_nano=(
            usd_to_nano_floor(b.approval_above_usd) if b.approval_above_usd is not None else None
        ),
    )


def policy_input(
    *,
    request: ChatRequest,
    ctx: RequestContext,
    caller: Caller,
    decision: Decision,
    candidates: Mapping[str, tuple[ModelEntry, Amounts]],
    states: Sequence[BudgetState],
    approval: ApprovalView | None,
    prompt_hash: str,
    policy_version: str,
    constitution_hash: str,
) -> PolicyInput:
    """The input of ``data.soma.gateway.verdict`` for this call (see ``policy/``)."""
    listed: list[Candidate] = [
        {
            "model_id": model_id,
            "tier": entry.tier,
            "worst_case": {
                "tokens": amounts.tokens,
                "usd_nano": amounts.usd_nano,
                "gpu_us": amounts.gpu_us,
            },
        }
        for model_id, (entry, amounts) in sorted(candidates.items())
    ]
    approval_doc: ApprovalInput | None = None
    if approval is not None:
        approval_doc = {
            "id": approval.approval_id,
            "status": approval.status,
            "prompt_hash": approval.prompt_hash,
            "model_id": approval.model_id,
        }
    return {
        "request": {
            "tenant": caller.tenant,
            "persona": caller.persona,
            "role": caller.role,
            "mode": ctx.mode,
            "session_id": ctx.session_id,
            "budget_trace_id": ctx.budget_trace_id,
            "prompt_hash": prompt_hash,
            "max_tokens": request.max_tokens,
            "stream": request.stream,
        },
        "route": {
            "model_id": decision.model.model_id,
            "tier": decision.model.tier,
            "escalated": decision.escalated,
            "reason": decision.reason,
            "candidates": listed,
        },
        "budgets": [_budget(s) for s in states],
        "approval": approval_doc,
        "policy": {"version": policy_version, "constitution_hash": constitution_hash},
    }
