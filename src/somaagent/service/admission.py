"""Budget and policy admission of one chat request, and the reservation of each attempt.

Order of work for a request (``Gatekeeper.admit``):

1. the worst case of every model the caller may use (``domain.worst_case``);
2. the worst case of the routed model is reserved atomically on the caller's budgets
   (Redis; counters rebuilt from Postgres when missing). The same script returns each
   counter as it found it, before this hold: the budget state of step 3, without a
   separate read (a hold the verdict does not use is released or moved in step 5);
3. the policy verdict (OPA) on the request envelope, budget state, router decision, prompt
   hash, policy version and constitution hash, emitted as a ``policy.events`` event with the
   policy latency;
4. in ``enforce`` mode the verdict is acted on (``allow``; ``downgrade`` to the model the
   policy names; ``pause`` -> 429 with ``Retry-After``; ``require_approval`` -> queued,
   403 ``approval_required`` with the approval id; ``deny`` -> 403 ``policy_denied``); in
   ``permissive`` mode it is only logged and emitted (``overridden``). A refusal releases
   the hold;
5. the model to call keeps its hold (or, after a downgrade, the hold moves to it). A
   reservation the budget refused (a concurrent request won the race) sends the request
   back to step 2, at most ``_MAX_ROUNDS`` times, reserving the model the last verdict
   chose; the budgets always hold, whatever the mode.

Each upstream attempt runs under a reservation for its own model (``begin``), and is settled
to its actual usage when it ends (``end``; an attempt that failed settles to zero, i.e. a
release). GPU-priced calls get a deadline that keeps them inside their reserved GPU time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from somaagent.adapters.approvals import Approval, ApprovalStore
from somaagent.domain.budget_header import tightest_remaining
from somaagent.domain.budgets import (
    Amounts,
    BudgetState,
    BudgetUnavailable,
    gpu_ms_to_us_ceil,
    usd_to_nano_ceil,
)
from somaagent.domain.chat_request import ChatRequest, RequestError
from somaagent.domain.events import Event
from somaagent.domain.identity import Caller, RequestContext
from somaagent.domain.policy import Verdict
from somaagent.domain.policy_input import policy_input
from somaagent.domain.policy_reuse import Reuse
from somaagent.domain.randomness import random_bits
from somaagent.domain.ratecards import RateBook, RateCardEntry
from somaagent.domain.routing import Decision, GpuPricing, ModelEntry
from somaagent.domain.worst_case import WorstCase, prompt_token_bound, worst_case
from somaagent.observability import GatewayMetrics
from somaagent.observability.tracing import Tracing
from somaagent.service.budget_gauge import BudgetGauge
from somaagent.service.budgets import BudgetService, ReserveOutcome
from somaagent.service.verdict_actions import (
    claim_approval,
    downgrade_target,
    presented_approval,
    queue_approval,
    refusal,
    verdict_event,
)
from somaagent.service.verdict_cache import Reused, VerdictCache
from somaagent.service.worst_cases import WorstCases

__all__ = ["Admission", "Gatekeeper"]

log = logging.getLogger("somaagent.admission")
_MAX_ROUNDS = 3
_PENDING = Verdict("allow", ("not decided yet",), "", None)  # until the policy's verdict


class PolicyPort(Protocol):
    async def adecide(self, input_doc: Mapping[str, Any]) -> tuple[Verdict, Reuse | None]: ...


@dataclass
class Admission:
    """What ``admit`` decided for one request; ``begin``/``end`` use it per attempt."""

    caller: Caller
    ctx: RequestContext
    request: ChatRequest
    prompt_hash: str
    verdict: Verdict
    entry: ModelEntry
    worst: dict[str, WorstCase]
    budgeted: bool
    units: dict[str, Amounts] = field(default_factory=dict)  # ``worst`` in budget units
    states: list[BudgetState] = field(default_factory=list)
    reservation: str | None = None
    reserved_model: str | None = None
    approval: Approval | None = None
    spent: Amounts = field(default_factory=Amounts)
    events: list[Event] = field(default_factory=list)
    refusal: str = ""  # why the last reservation was refused (budget, dimension, amounts)
    refused_model: str | None = None  # the model whose reservation was just refused
    # Whether a budget limits money or GPU time (what a GPU-priced call's time costs).
    time_limited: bool = False

    def take_events(self) -> list[Event]:
        """The events held back for the request's single publish (the policy verdict)."""
        events, self.events = self.events, []
        return events

    def deadline(self, entry: ModelEntry, timeout_s: float) -> float:
        """The upstream timeout; the reserved GPU time bounds it when a budget limits money
        or GPU time (a tokens-only budget is bounded by ``max_tokens`` alone)."""
        bound = self.worst.get(entry.model_id)
        if self.time_limited and bound is not None and bound.deadline_s is not None:
            return min(timeout_s, bound.deadline_s)
        return timeout_s

    def remaining_header(self) -> str | None:
        """``x-soma-budget-remaining``: what the tightest budget has left, counting this
        request's settled spend (``<id> <window> <key>: tokens=N usd=D gpu_hours=D``,
        limited dimensions only; concurrent requests may have used some since)."""
        return tightest_remaining(self.states, self.spent)


@dataclass
class Gatekeeper:
    budgets: BudgetService | None
    policy: PolicyPort | None
    approvals: ApprovalStore | None
    rates: RateBook
    live: Callable[[Caller], Sequence[ModelEntry]]
    emit: Callable[[list[Event]], None]
    enforce: bool
    fail_closed: bool
    policy_version: str
    constitution_hash: str
    upstream_timeout_s: float
    approval_ttl_s: float
    producer: str
    unavailable: tuple[type[BaseException], ...] = ()
    reservation_grace_s: float = 30.0
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    metrics: GatewayMetrics | None = None
    close_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    tracing: Tracing = field(default_factory=lambda: Tracing(None))
    # Verdicts the policy declared reusable (None: every call is evaluated).
    reuse: VerdictCache | None = None
    gauge: BudgetGauge = field(default_factory=BudgetGauge)
    worst_cases: WorstCases = field(default_factory=WorstCases, repr=False)

    async def aclose(self) -> None:
        """Flush budget charges, then close the budget and policy adapters."""
        if self.budgets is not None:
            await self.budgets.aclose()
        for hook in self.close_hooks:
            await hook()

    # ------------------------------------------------------------------ bounds
    def bound(self, entry: ModelEntry, request: ChatRequest, prompt_tokens: int) -> WorstCase:
        """The worst case of ``entry`` under the rate card in effect now."""
        card = self.rates.current(entry.model_id, self.clock())
        return self._bound(card, entry, request, prompt_tokens)

    def _bound(
        self,
        card: RateCardEntry | None,
        entry: ModelEntry,
        request: ChatRequest,
        prompt_tokens: int,
    ) -> WorstCase:
        pricing = card.pricing if card is not None else entry.pricing
        return worst_case(
            model_id=entry.model_id,
            pricing=pricing,
            prompt_tokens=prompt_tokens,
            max_tokens=request.max_tokens,
            max_ms_per_token=card.max_ms_per_token if card is not None else None,
            timeout_s=self.upstream_timeout_s,
        )

    @staticmethod
    def amounts(bound: WorstCase) -> Amounts:
        return Amounts(
            tokens=bound.tokens,
            usd_nano=usd_to_nano_ceil(bound.usd),
            gpu_us=gpu_ms_to_us_ceil(bound.gpu_ms),
        )

    def bounds(
        self, entry: ModelEntry, request: ChatRequest, prompt_tokens: int
    ) -> tuple[WorstCase, Amounts]:
        """``bound`` and its ``amounts``, remembered (``WorstCases``) while the rate card in
        effect, the entry's pricing and the timeout stay the same."""
        card = self.rates.current(entry.model_id, self.clock())

        def compute() -> tuple[WorstCase, Amounts]:  # priced with the card it is keyed by
            worst = self._bound(card, entry, request, prompt_tokens)
            return worst, self.amounts(worst)

        return self.worst_cases.get(
            (entry.model_id, prompt_tokens, request.max_tokens),
            card=card,
            pricing=entry.pricing,
            timeout_s=self.upstream_timeout_s,
            compute=compute,
        )

    # ------------------------------------------------------------------ admit
    async def admit(
        self,
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        decision: Decision,
        *,
        approval_id: str | None = None,
    ) -> Admission:
        """Verdict, then a reservation for the model to call; RequestError when refused.

        Budgets that cannot be checked (Redis or PostgreSQL down) refuse the request with a
        503 in ``enforce`` mode; in ``permissive`` mode the request runs unbudgeted.
        """
        try:
            return await self._admit(request, caller, ctx, decision, approval_id, budgets=True)
        except BudgetUnavailable as exc:
            if self.enforce:
                raise RequestError(
                    503,
                    f"budgets cannot be checked right now, so nothing is spent: {exc}",
                    code="budgets_unavailable",
                    kind="server_error",
                ) from None
            log.warning("budgets unavailable; permissive mode runs the request: %s", exc)
            return await self._admit(request, caller, ctx, decision, approval_id, budgets=False)

    async def _admit(
        self,
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        decision: Decision,
        approval_id: str | None,
        *,
        budgets: bool,
    ) -> Admission:
        prompt_hash = request.prompt_hash
        prompt_tokens = prompt_token_bound(request.messages)
        models = {e.model_id: e for e in (decision.model, *self.live(caller))}
        worst: dict[str, WorstCase] = {}
        units: dict[str, Amounts] = {}  # converted once per request
        for m, e in models.items():
            worst[m], units[m] = self.bounds(e, request, prompt_tokens)
        applicable = (
            await self.budgets.applicable(caller.tenant, caller.persona)
            if budgets and self.budgets is not None
            else []
        )
        approval = (
            await presented_approval(self.approvals, approval_id, caller, prompt_hash)
            if approval_id
            else None
        )
        # Whether a budget limits money or GPU time (what bounds a GPU-priced call's deadline).
        time_limited = any(
            b.limit_usd is not None or b.limit_gpu_hours is not None for b in applicable
        )
        held: list[Event] = []  # verdict events: published with the call's, or at a refusal
        first = decision.model  # the model reserved first (and the state read with it)
        for _ in range(_MAX_ROUNDS):
            adm = Admission(
                caller=caller,
                ctx=ctx,
                request=request,
                prompt_hash=prompt_hash,
                verdict=_PENDING,
                entry=first,
                worst=worst,
                units=units,
                budgeted=bool(applicable),
                approval=approval,
                events=held,
                time_limited=time_limited,
            )
            try:
                if adm.budgeted:
                    # Reserve first: the script that holds the worst case returns the counters
                    # as it found them, which is exactly the state the policy would have read.
                    adm.states = list((await self.reserve_for(adm, first)).states)
                adm.verdict, event = await self._verdict(
                    request, caller, ctx, decision, units, models, adm.states, approval, prompt_hash
                )
                held.append(event)
                adm.entry = await self._act(
                    adm.verdict, decision, models, request, caller, ctx, prompt_hash, worst
                )
                fits = await self.begin(adm, adm.entry)
            except (Exception, asyncio.CancelledError):
                # A refusal, the budgets unreachable, or the client gone (the handler's task
                # cancelled): the hold is released now and the verdicts still go out.
                await self.abandon(adm)
                self.emit(held)
                raise
            if fits:
                if approval is not None:
                    try:
                        await claim_approval(self.approvals, approval, caller, prompt_hash)
                    except (Exception, asyncio.CancelledError):  # refused, or the client gone
                        await self.abandon(adm)
                        self.emit(held)
                        raise
                return adm
            first = adm.entry
        self.emit(held)
        # The policy allowed the call (a fail-open verdict, or the room went to concurrent
        # requests between each state read and reserve) but the budget cannot hold it.
        raise RequestError(
            429,
            f"the budget cannot hold this call right now: {adm.refusal}",
            code="budget_exceeded",
            kind="rate_limit_error",
        )

    async def _verdict(
        self,
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        decision: Decision,
        units: dict[str, Amounts],
        models: dict[str, ModelEntry],
        states: list[BudgetState],
        approval: Approval | None,
        prompt_hash: str,
    ) -> tuple[Verdict, Event]:
        """The policy's verdict and its (not yet published) ``policy.events`` event;
        ``units``: each candidate model's worst case in budget units."""
        doc = policy_input(
            request=request,
            caller=caller,
            ctx=ctx,
            decision=decision,
            candidates={m: (models[m], u) for m, u in units.items()},
            states=states,
            approval=approval,
            prompt_hash=prompt_hash,
            policy_version=self.policy_version,
            constitution_hash=self.constitution_hash,
        )
        key = (caller.tenant, caller.persona, decision.model.model_id)
        with self.tracing.span("policy.evaluate") as span:
            verdict, latency_ms, reuse = await self._evaluate(doc, ctx, decision, key)
            self.tracing.set(
                span,
                soma__policy__verdict=verdict.action,
                soma__policy__model=verdict.model_id,
                soma__policy__latency_ms=round(latency_ms, 3),
                soma__policy__version=self.policy_version,
                soma__policy__reused=isinstance(reuse, Reused),
            )
        blocks = verdict.action in ("pause", "require_approval", "deny")
        event = self._verdict_event(
            ctx,
            verdict,
            blocked=blocks and self.enforce,
            overridden=verdict.action != "allow" and not self.enforce,
            latency_ms=latency_ms,
            reused_from=reuse.source_event_id if isinstance(reuse, Reused) else None,
        )
        if isinstance(reuse, Reuse) and self.reuse is not None:
            self.reuse.put(key, doc, verdict, reuse, event.event_id)
        if self.metrics is not None:
            self.metrics.record_policy(
                verdict.action, latency_ms / 1000, reused=isinstance(reuse, Reused)
            )
            columns = zip(*(u.as_tuple() for u in units.values()), strict=True)
            cheapest = Amounts(*(min(col) for col in columns))
            self.publish_ratios(caller, states, Amounts(), cheapest=cheapest)
            if blocks and self.enforce:
                self.metrics.record_call(
                    tenant=caller.tenant,
                    persona=caller.persona,
                    model=decision.model.model_id,
                    tier=decision.model.tier,
                    status="refused",
                    input_tokens=None,
                    output_tokens=None,
                    duration_s=0.0,
                    cost_usd=Decimal(0),
                )
        return verdict, event

    def publish_ratios(
        self,
        caller: Caller,
        states: list[BudgetState],
        extra: Amounts,
        *,
        cheapest: Amounts | None = None,
    ) -> None:
        """Note each budget's use for ``soma_budget_remaining_ratio`` (``service.budget_gauge``)."""
        if self.metrics is not None:
            self.gauge.note(caller.tenant, states, extra, cheapest=cheapest)

    def flush_ratios(self) -> None:
        """Publish ``soma_budget_remaining_ratio`` for every budget used since the last flush."""
        if self.metrics is not None:
            self.gauge.flush(self.metrics)

    async def _evaluate(
        self,
        doc: Mapping[str, Any],
        ctx: RequestContext,
        decision: Decision,
        key: tuple[str, ...],
    ) -> tuple[Verdict, float, Reuse | Reused | None]:
        """The verdict, the time it took (ms), and either the conditions under which the
        policy lets it be reused or the cached verdict it is."""
        started = time.perf_counter()
        if self.policy is None:
            verdict = Verdict(
                "allow", ("no policy engine is configured",), decision.model.model_id, None
            )
            return verdict, (time.perf_counter() - started) * 1000, None
        if self.reuse is not None:
            hit = self.reuse.get(key, doc)
            if hit is not None:
                return hit.verdict, (time.perf_counter() - started) * 1000, hit
        reuse: Reuse | None = None
        try:
            decide = getattr(self.policy, "decide", None)
            verdict, reuse = decide(doc) if decide is not None else await self.policy.adecide(doc)
        except self.unavailable as exc:
            if self.fail_closed:
                denied = self._verdict_event(
                    ctx,
                    Verdict(
                        "deny",
                        (f"policy engine unavailable: {exc}",),
                        decision.model.model_id,
                        None,
                    ),
                    blocked=True,
                    overridden=False,
                    latency_ms=(time.perf_counter() - started) * 1000,
                )
                self.emit([denied])
                raise RequestError(
                    503,
                    f"the policy engine is unavailable and this deployment fails closed: {exc}",
                    code="policy_unavailable",
                    kind="server_error",
                ) from None
            log.warning("policy engine unavailable, failing open: %s", exc)
            verdict = Verdict(
                "allow",
                (f"policy engine unavailable (fail open): {exc}",),
                decision.model.model_id,
                None,
            )
        return verdict, (time.perf_counter() - started) * 1000, reuse

    def _verdict_event(
        self,
        ctx: RequestContext,
        verdict: Verdict,
        *,
        blocked: bool,
        overridden: bool,
        latency_ms: float,
        reused_from: str | None = None,
    ) -> Event:
        if reused_from is not None:
            note = f"reused: the verdict of policy event {reused_from}, whose conditions hold"
            verdict = Verdict(
                verdict.action, (*verdict.reasons, note), verdict.model_id, verdict.retry_after
            )
        return verdict_event(
            ctx,
            verdict,
            producer=self.producer,
            policy_version=self.policy_version,
            constitution_hash=self.constitution_hash,
            blocked=blocked,
            overridden=overridden,
            latency_ms=latency_ms,
        )

    async def _act(
        self,
        verdict: Verdict,
        decision: Decision,
        models: dict[str, ModelEntry],
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        prompt_hash: str,
        worst: dict[str, WorstCase],
    ) -> ModelEntry:
        """The model to call under ``verdict``; RequestError when the verdict refuses."""
        if verdict.action == "allow" or not self.enforce:
            return decision.model
        if verdict.action == "downgrade":
            return downgrade_target(verdict, models)
        if verdict.action == "require_approval":
            raise await queue_approval(
                self.approvals,
                verdict,
                caller=caller,
                ctx=ctx,
                model_id=decision.model.model_id,
                prompt_hash=prompt_hash,
                max_tokens=request.max_tokens,
                worst_case_usd=worst[decision.model.model_id].usd,
                ttl_s=self.approval_ttl_s,
            )
        raise refusal(verdict, self.clock())

    # ------------------------------------------------------------------ attempts
    async def begin(self, adm: Admission, entry: ModelEntry) -> bool:
        """Reserve ``entry``'s worst case for the next attempt; False when it does not fit
        (in ``permissive`` mode a refused call runs anyway: True, and its spend still counts).

        A hold already on ``entry`` is kept; one just refused for ``entry`` is not asked for
        again. Raises ``BudgetUnavailable`` when the budgets cannot be reached.
        """
        if not adm.budgeted or self.budgets is None:
            return True
        if adm.reservation is not None and adm.reserved_model == entry.model_id:
            return True
        if adm.refused_model == entry.model_id:
            return False
        await self.reserve_for(adm, entry)
        return adm.reservation is not None

    async def reserve_for(self, adm: Admission, entry: ModelEntry) -> ReserveOutcome:
        """Hold ``entry``'s worst case on the caller's budgets, in place of any other hold
        of ``adm``; the outcome carries the budgets' states as the reservation found them."""
        assert self.budgets is not None
        if adm.reservation is not None:
            await self.budgets.release(adm.reservation)
            adm.reservation = adm.reserved_model = None
        adm.refused_model = None
        bound = adm.worst.get(entry.model_id)
        if bound is None:
            prompt_tokens = prompt_token_bound(adm.request.messages)
            bound, units = self.bounds(entry, adm.request, prompt_tokens)
            adm.worst[entry.model_id] = bound
            adm.units.setdefault(entry.model_id, units)  # converted with the bound, not again
        amounts = adm.units.get(entry.model_id)
        if amounts is None:
            amounts = adm.units[entry.model_id] = self.amounts(bound)
        rid = f"res_{random_bits(96):024x}"  # unique, not secret (domain.randomness)
        outcome = await self.budgets.reserve(
            tenant=adm.caller.tenant,
            persona=adm.caller.persona,
            amounts=amounts,
            reservation_id=rid,
            # the hold outlives the call's deadline by the time settling can take
            deadline_s=adm.deadline(entry, self.upstream_timeout_s) + self.reservation_grace_s,
            at=self.clock(),
        )
        if outcome or not self.enforce:  # permissive: run unreserved, settle still counts
            adm.reservation, adm.reserved_model = rid, entry.model_id
        if not outcome:
            adm.refusal = "; ".join(
                f"budget {x.budget.budget_id} ({x.budget.window} {x.window.key}):"
                f" {x.dimension} needs {x.requested}, {x.remaining} remain"
                for x in outcome.exceeded
            )
            if self.enforce:
                adm.refused_model = entry.model_id
        return outcome

    async def end(
        self, adm: Admission, entry: ModelEntry, *, tokens: int, cost_usd: Decimal, gpu_ms: float
    ) -> None:
        """Settle the attempt's reservation to what it actually used."""
        if not adm.budgeted or self.budgets is None or adm.reservation is None:
            return
        card = self.rates.current(entry.model_id, self.clock())
        pricing = card.pricing if card is not None else entry.pricing
        gpu = Decimal(repr(float(gpu_ms))) if isinstance(pricing, GpuPricing) else Decimal(0)
        rid, adm.reservation, adm.reserved_model = adm.reservation, None, None
        # Redis is told in the background: the answer need not wait for that round trip.
        charged = await self.budgets.settle(
            rid, model_id=entry.model_id, tokens=tokens, cost_usd=cost_usd, gpu_ms=gpu, wait=False
        )
        adm.spent = adm.spent + charged
        self.publish_ratios(adm.caller, adm.states, adm.spent)

    async def abandon(self, adm: Admission) -> None:
        """Release an unused reservation (the request ended without another attempt)."""
        if adm.reservation is not None and self.budgets is not None:
            rid, adm.reservation, adm.reserved_model = adm.reservation, None, None
            await self.budgets.release(rid)
