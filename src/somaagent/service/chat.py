"""Handle one chat completion over the language ladder (non-streamed; streaming in
``chat_stream``): route, call with fallbacks and circuit breakers, account exactly, emit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, NoReturn

from somaagent.adapters.upstream import (
    Measurements,
    UpstreamError,
    Usage,
)
from somaagent.domain.budgets import BudgetUnavailable
from somaagent.domain.chat_request import ChatRequest, RequestError
from somaagent.domain.events import Codec, ContractError, Event
from somaagent.domain.identity import Caller, RequestContext
from somaagent.domain.money import exact_sum
from somaagent.domain.ratecards import RateBook
from somaagent.domain.routing import (
    Catalog,
    ClassifierConfig,
    Decision,
    ModelEntry,
    ModelStats,
    NoRouteError,
    RankingMemo,
    RequestRejected,
    RouterFlags,
    classify_messages,
    decide,
)
from somaagent.domain.routing.retry import RetryPolicy
from somaagent.domain.routing.signals import upstream_signal
from somaagent.observability import GatewayMetrics
from somaagent.observability.tracing import Tracing
from somaagent.service.admission import Admission, Gatekeeper
from somaagent.service.call_events import CallRecord, call_event, conversation_event
from somaagent.service.call_records import (
    failed_record,
    gpu_ms_of,
    observe_calls,
    ok_record,
    price,
    span_attributes,
    span_results,
)
from somaagent.service.chat_errors import every_upstream_failed, rejected, route_headers
from somaagent.service.chat_turn import ChatOutcome, ClientGone, Publisher, Turn
from somaagent.service.escalation_notice import escalation_notice
from somaagent.service.rate_limits import RateGate, RateHolds
from somaagent.service.upstream_slots import Slot
from somaagent.service.upstreams import Upstream, gives_way, send, slot_for, within_quota

__all__ = [
    "ChatOutcome",
    "ChatService",
    "ClientGone",
    "Turn",
    "Upstream",
    "route_headers",
    "upstream_signal",
]

log = logging.getLogger("somaagent.chat")


@dataclass
class ChatService:
    """The chat use case; every collaborator is passed in by ``bootstrap``."""

    catalog: Catalog
    upstreams: dict[str, Upstream]
    publisher: Publisher
    codec: Codec
    topic_for_event_type: Mapping[str, str]
    flags: RouterFlags
    classifier: ClassifierConfig
    deployment_mode: str
    rates: RateBook
    upstream_timeout_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    producer: str = "somaagent.gateway/0.1.0"
    stats: Callable[[], Mapping[str, ModelStats]] = dict
    clock: Callable[[], float] = time.monotonic
    background: set[asyncio.Task[None]] = field(default_factory=set)
    metrics: GatewayMetrics | None = None
    gate: Gatekeeper | None = None
    limits: RateGate | None = None
    tracing: Tracing = field(default_factory=lambda: Tracing(None))
    ranking_memo: RankingMemo = field(default_factory=RankingMemo)

    # ------------------------------------------------------------------ routing
    def open_circuits(self) -> frozenset[str]:
        now = self.clock()
        return frozenset(m for m, u in self.upstreams.items() if not u.breaker.available(now))

    def route(self, request: ChatRequest, caller: Caller, signal: str | None = None) -> Decision:
        if signal is None and self.publisher.spool_error is not None:
            raise RequestError(  # before anything is spent: this call could not be accounted
                503,
                "calls are refused while their telemetry cannot be written durably (spool: "
                f"{self.publisher.spool_error}); retry shortly",
                code="telemetry_unavailable",
                kind="server_error",
                headers={"retry-after": "5"},
            )
        with self.tracing.span("router.decide") as span:
            decision = self._route(request, caller, signal)
            self.tracing.set(
                span,
                soma__route__model=decision.model.model_id,
                soma__route__tier=decision.model.tier,
                soma__route__reason=decision.reason,
                soma__route__escalated=decision.escalated,
            )
            return decision

    def _route(self, request: ChatRequest, caller: Caller, signal: str | None) -> Decision:
        classification = classify_messages(
            list(request.messages), max_tokens=request.max_tokens, config=self.classifier
        )
        requested = request.model if request.model not in (None, "auto") else None
        try:
            return decide(
                catalog=self.catalog,
                persona=caller.persona,
                role=caller.role,
                flags=self.flags,
                classification=classification,
                stats=self.stats(),
                requested_model=requested,
                upstream_signal=signal,  # type: ignore[arg-type]
                open_circuits=self.open_circuits(),
                memo=self.ranking_memo,
            )
        except RequestRejected as exc:
            status = 403 if exc.code == "model_not_allowed" else 404
            code = "model_not_found" if status == 404 else exc.code
            raise RequestError(status, str(exc), param="model", code=code) from None
        except NoRouteError as exc:
            raise RequestError(
                503, f"no model is available: {exc}", code="no_route", kind="server_error"
            ) from None

    def candidates(self, decision: Decision) -> list[ModelEntry]:
        return [e for e in (decision.model, *decision.fallbacks) if e.model_id in self.upstreams]

    # ------------------------------------------------------------------ accounting
    def price(self, entry: ModelEntry, usage: Usage, gpu_ms: float) -> tuple[Decimal, str]:
        """The call's exact cost and the rate-card version it was priced with."""
        return price(self.rates, entry, usage, gpu_ms)

    async def admit(
        self,
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        decision: Decision,
        approval_id: str | None,
    ) -> tuple[Admission | None, list[ModelEntry]]:
        """Budget/policy admission and the candidates in the order to try them."""
        candidates = self.candidates(decision)
        if self.gate is None:
            return None, candidates
        adm = await self.gate.admit(request, caller, ctx, decision, approval_id=approval_id)
        if adm.entry.model_id != decision.model.model_id:
            candidates = [adm.entry, *(c for c in candidates if c.model_id != adm.entry.model_id)]
        return adm, candidates

    def timeout(self, adm: Admission | None, entry: ModelEntry) -> float:
        return adm.deadline(entry, self.upstream_timeout_s) if adm else self.upstream_timeout_s

    def gate_headers(self, adm: Admission | None) -> dict[str, str]:
        if adm is None:
            return {}
        v = adm.verdict
        headers = {
            "x-soma-policy-verdict": v.action
            if self.gate and self.gate.enforce or v.action == "allow"
            else f"{v.action} (not enforced)"
        }
        remaining = adm.remaining_header()
        if remaining:
            headers["x-soma-budget-remaining"] = remaining
        return headers

    @staticmethod
    def gpu_ms(measurements: Measurements) -> float:
        return gpu_ms_of(measurements)

    def emit(self, events: list[Event]) -> None:
        """Validate and durably publish (the spool makes this safe without a broker)."""
        records = [
            (self.topic_for_event_type[e.event_type], e.tenant.encode(), self._encoded(e))
            for e in events
        ]
        self.publisher.publish_many(records)

    def _encoded(self, event: Event) -> bytes:
        try:
            return self.codec.encode(event)
        except ContractError as exc:
            # A bug, or an upstream's figures the adapter let through: the call's record is
            # kept anyway. The worker dead-letters it with the reason (the DeadLetterGrowth
            # alert, ``soma_dead_letters_total``), instead of the call failing unaccounted.
            log.error("%s event %s breaks the contract: %s", event.event_type, event.event_id, exc)
            return self.codec.encode_unchecked(event)

    def account(
        self,
        turn: Turn,
        records: list[CallRecord],
        *,
        streaming_ms: float = 0.0,
        interrupted: bool = False,
    ) -> None:
        """Emit the request's events in one publish: its policy verdict (held back by the
        admission), one event per attempt and the conversation event."""
        ctx, request, adm = turn.ctx, turn.request, turn.adm
        events: list[Event] = adm.take_events() if adm is not None else []
        events += [
            call_event(
                r,
                ctx=ctx,
                request=request,
                decision_tree=turn.tree,
                deployment_mode=self.deployment_mode,
                producer=self.producer,
            )
            for r in records
        ]
        last = records[-1] if records else None
        events.append(
            conversation_event(
                ctx=ctx,
                request=request,
                model_id=last.entry.model_id if last else "",
                streaming_duration_ms=streaming_ms,
                # Failed attempts other than the one cut short (if one was: a turn may
                # also end between attempts, in a retry's back-off).
                requeues=sum(1 for r in records if r.status not in ("ok", "interrupted")),
                interrupted=interrupted,
                failed=last is None or last.status == "error",
                producer=self.producer,
            )
        )
        with self.tracing.span("telemetry.publish", {"soma.events": len(events)}):
            self.emit(events)
        if turn.hold is not None:
            turn.hold.settle(sum(r.input_tokens + r.output_tokens for r in records))
        self._observe(records, turn.caller)

    def _observe(self, records: list[CallRecord], caller: Caller) -> None:
        if self.metrics is not None:
            observe_calls(self.metrics, records, caller)

    # ------------------------------------------------------------------ non-streamed
    async def complete(
        self,
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        received: float,
        approval_id: str | None = None,
        gone: Callable[[], bool] | None = None,
        *,
        answer_first: bool = False,
    ) -> ChatOutcome:
        """Answer a non-streamed call. ``gone`` says whether the client has left: then no
        further attempt (the first, a retry, a fallback, the escalation) is made for it
        (``ClientGone``). The call is accounted for before this returns, unless
        ``answer_first``: then the caller writes the answer and awaits
        ``outcome.close()`` next (see :class:`ChatOutcome`)."""
        decision = self.route(request, caller)
        hold = await self.limits.admit(request, caller) if self.limits is not None else None
        adm: Admission | None = None
        outcome: ChatOutcome | None = None
        try:
            adm, candidates = await self.admit(request, caller, ctx, decision, approval_id)
            turn = self.new_turn(request, caller, ctx, decision, adm, hold)
            outcome = await self._complete(turn, received, decision, candidates, gone)
        finally:
            if outcome is None:  # refused, failed, the client left, or a bug: end it now
                await self.conclude(adm, hold)
        if hold is not None:
            outcome.headers.update(hold.headers)
        outcome.after = partial(self.conclude, adm, hold, outcome.accounting)
        outcome.accounting = None
        if not answer_first:
            await outcome.close()
        return outcome

    async def conclude(
        self,
        adm: Admission | None,
        hold: RateHolds | None,
        accounting: Callable[[], None] | None = None,
    ) -> None:
        """Publish an answered call's events (``accounting``), then end its admission
        (:meth:`finish`) and release a rate-limit hold no accounting settled."""
        try:
            try:
                if accounting is not None:
                    accounting()
            finally:
                await self.finish(adm)
        finally:
            if hold is not None:
                hold.release()  # when no accounting settled it (a refusal, a bug)

    async def finish(self, adm: Admission | None) -> None:
        """End a request's admission: release a reservation no attempt settled and publish
        a verdict event not yet published (both no-ops after a normal ``account``)."""
        if adm is not None and self.gate is not None:
            await self.gate.abandon(adm)
            self.emit(adm.take_events())

    async def _complete(
        self,
        turn: Turn,
        received: float,
        decision: Decision,
        candidates: list[ModelEntry],
        gone: Callable[[], bool] | None = None,
    ) -> ChatOutcome:
        request, caller, ctx, adm = turn.request, turn.caller, turn.ctx, turn.adm
        tree, attempts = turn.tree, turn.attempts
        records: list[CallRecord] = []
        reason: str = decision.reason
        deferred: tuple[dict[str, Any], Usage, CallRecord] | None = None
        failures: dict[str, int] = {}
        while candidates:
            if gone is not None and gone():  # nobody waits for this answer any more
                self.left(turn, records)
            entry = candidates.pop(0)
            up = self.upstreams[entry.model_id]
            slot = await self.ready(turn, entry, candidates, gone)
            if slot is None:
                continue
            body = request.upstream_body(entry.model_id)
            started = time.perf_counter()
            span = self.tracing.start(
                f"chat {entry.model_id}", self.span_attributes(entry, request)
            )
            try:
                result = await send(
                    up,
                    slot,
                    body,
                    timeout_s=self.timeout(adm, entry),
                    traceparent=self.tracing.traceparent(span, ctx.trace.traceparent),
                )
            except UpstreamError as exc:
                records.append(
                    await self.attempt_failed(
                        span, adm, entry, exc, attempts, started, received, reason, slot
                    )
                )
                self.end_if_refused(
                    turn, records, exc, entry, candidates, answered=deferred is not None
                )
                if await self.retries(entry, exc, attempts, failures):
                    candidates.insert(0, entry)
                else:
                    reason = "fallback"
                continue
            up.breaker.record_success(self.clock())
            usage = await up.counter.usage_for_result(body, result)
            text = "".join(c.text for c in result.choices)
            record = self.ok_record(entry, usage, result.measurements, started, received, reason)
            record.completion_chars = len(text)
            await self.attempt_answered(span, adm, entry, record, attempts, slot)
            escalation = self.escalate_on(upstream_signal(text), entry, request, caller, tree)
            if escalation is not None:
                record.status = "fallback"
                records.append(record)
                deferred = (result.body, usage, record)
                reason = escalation.reason
                candidates = [e for e in self.candidates(escalation) if e.tier == "escalation"]
                continue
            records.append(record)
            notice = self.notice(record, caller)
            if notice:
                tree["escalation_notice"] = notice
            return self._answer(turn, result.body, usage, record, records, notice)
        if gone is not None and gone():  # it left during the last attempt or its wait
            self.left(turn, records)
        return self.exhausted(turn, records, deferred)

    @staticmethod
    def new_turn(
        request: ChatRequest,
        caller: Caller,
        ctx: RequestContext,
        decision: Decision,
        adm: Admission | None,
        hold: RateHolds | None = None,
    ) -> Turn:
        """The request's turn, with the events' decision tree (router + policy verdict) and
        its empty attempts list."""
        tree = decision.decision_tree()
        if adm is not None:
            tree["policy"] = {"verdict": adm.verdict.action, "reasons": list(adm.verdict.reasons)}
        tree["attempts"] = []
        return Turn(request, caller, ctx, tree, adm, hold)

    async def ready(
        self,
        turn: Turn,
        entry: ModelEntry,
        rest: list[ModelEntry],
        gone: Callable[[], bool] | None = None,
    ) -> Slot | None:
        """The next attempt's place on ``entry``'s upstream, if its circuit is closed, its
        worst case fits the budget and a slot is free or frees in time; else None (the
        reason listed in ``attempts``, or ``gone`` said the client left while it waited).
        A model with every slot taken first gives way to another of ``rest`` (the
        candidates left) on its tier with room now; one with rate limits of its own needs
        room in them too (``within_quota``)."""
        adm, attempts = turn.adm, turn.attempts
        up = self.upstreams[entry.model_id]
        capped = up.slots is not None
        if capped and gives_way(self.upstreams, entry, attempts, rest, self.clock()):
            return None
        if not await self.may_try(adm, entry, attempts):
            return None
        slot = (
            await slot_for(up, attempts, self.timeout(adm, entry), gone)
            if capped
            else Slot(None, 0.0)  # no limit: no wait, nothing to give back
        )
        if slot is None or entry.rate_limits is None or self.limits is None:
            return slot
        return await within_quota(self.limits, entry, turn.request, slot, attempts)

    async def attempt_answered(
        self,
        span: Any,
        adm: Admission | None,
        entry: ModelEntry,
        record: CallRecord,
        attempts: list[dict[str, Any]],
        slot: Slot,
    ) -> None:
        """End the answered attempt's span, settle its budget and quota, list it in
        ``attempts``."""
        self.end_span(span, record)
        await self.settle(adm, entry, record, slot)
        attempts.append({"model_id": entry.model_id, "status": "ok"})

    async def attempt_failed(
        self,
        span: Any,
        adm: Admission | None,
        entry: ModelEntry,
        exc: UpstreamError,
        attempts: list[dict[str, Any]],
        started: float,
        received: float,
        reason: str,
        slot: Slot,
    ) -> CallRecord:
        """End the failed attempt: its span, its count on the breaker, its entry in
        ``attempts``; its record (a timed-out call is charged its GPU time: see
        ``call_records.failed_record``), budget reservation and quota settled. An upstream
        that refused the request itself answered as a healthy one does: that counts as a
        success, so no client's bad requests can open its circuit for others."""
        self.tracing.end(span, f"upstream_{exc.kind}")
        breaker = self.upstreams[entry.model_id].breaker
        if exc.rejects_request:
            breaker.record_success(self.clock())
        else:
            breaker.record_failure(self.clock())
        attempts.append({"model_id": entry.model_id, "error": exc.kind, "status": exc.status})
        record = failed_record(
            self.rates,
            entry,
            exc,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            timeout_s=self.timeout(adm, entry),
            queue_delay_ms=(started - received) * 1000,
            reason=reason,
        )
        await self.settle(adm, entry, record, slot)
        return record

    async def may_try(
        self, adm: Admission | None, entry: ModelEntry, attempts: list[dict[str, Any]]
    ) -> bool:
        """Whether ``entry``'s circuit is closed and its worst case fits the budget."""
        if not self.upstreams[entry.model_id].breaker.allow(self.clock()):
            attempts.append({"model_id": entry.model_id, "skipped": "circuit_open"})
            return False
        if adm is None or self.gate is None:
            return True
        try:
            fits = await self.gate.begin(adm, entry)
        except BudgetUnavailable as exc:
            log.warning("budget reservation for %s failed: %s", entry.model_id, exc)
            if self.gate.enforce:
                attempts.append({"model_id": entry.model_id, "skipped": "budget_unavailable"})
                return False
            return True
        if not fits:
            attempts.append({"model_id": entry.model_id, "skipped": "over_budget"})
        return fits

    def ok_record(
        self,
        entry: ModelEntry,
        usage: Usage,
        measurements: Measurements,
        started: float,
        received: float,
        reason: str,
    ) -> CallRecord:
        return ok_record(
            self.rates,
            entry,
            usage,
            measurements,
            queue_delay_ms=(started - received) * 1000,
            reason=reason,
        )

    @staticmethod
    def span_attributes(entry: ModelEntry, request: ChatRequest) -> dict[str, Any]:
        return span_attributes(entry, request)

    def end_span(self, span: Any, record: CallRecord) -> None:
        self.tracing.set(span, **span_results(record))
        self.tracing.end(span, None if record.status in ("ok", "fallback") else record.status)

    async def settle(
        self, adm: Admission | None, entry: ModelEntry, record: CallRecord, slot: Slot
    ) -> None:
        """Settle the attempt's budget reservation and its hold on the model's quota (the
        slot's) to what it used (zero when it failed)."""
        tokens = record.input_tokens + record.output_tokens
        slot.settle(tokens)
        if adm is None or self.gate is None:
            return
        await self.gate.end(
            adm,
            entry,
            tokens=tokens,
            cost_usd=record.cost_usd,
            gpu_ms=record.gpu_ms,
        )

    def notice(self, record: CallRecord, caller: Caller) -> str | None:
        """``escalated to X: +N USD est.`` for an escalated call (header and event)."""
        if record.entry.tier != "escalation":
            return None
        return escalation_notice(
            record,
            primaries=[
                e
                for e in self.catalog.allowed_for(caller.persona, caller.role)
                if e.tier == "primary" and e.model_id in self.upstreams
            ],
            rates=self.rates,
            stats=self.stats(),
        )

    def exhausted(
        self,
        turn: Turn,
        records: list[CallRecord],
        deferred: tuple[dict[str, Any], Usage, CallRecord] | None,
    ) -> ChatOutcome:
        """No candidate answered: the deferring primary's answer if there is one, else 503."""
        if deferred is not None:
            # The escalation failed: the primary's own answer is better than none.
            body, deferred_usage, answered = deferred
            answered.status = "ok"
            turn.tree["escalation_failed"] = True
            return self._answer(turn, body, deferred_usage, answered, records, None)
        self.all_failed(turn, records)

    def left(self, turn: Turn, records: list[CallRecord]) -> NoReturn:
        """The client left before an attempt: account for those made (if any), the turn
        as interrupted, and end the call (``ClientGone``)."""
        self.account(turn, records, interrupted=True)
        raise ClientGone()

    def all_failed(self, turn: Turn, records: list[CallRecord]) -> NoReturn:
        """Account for the failed attempts and answer 503 naming each one (see
        :func:`every_upstream_failed`)."""
        self.account(turn, records)
        raise every_upstream_failed(turn.attempts)

    def escalate_on(
        self,
        signal: str | None,
        entry: ModelEntry,
        request: ChatRequest,
        caller: Caller,
        tree: dict[str, Any],
    ) -> Decision | None:
        """The escalation that ``entry``'s answer signalled, noted in ``tree``; None when
        there is no signal, escalation is off, or no escalation model may answer."""
        if signal is None or entry.tier == "escalation" or not self.flags.escalation_enabled:
            return None
        escalation = self.route(request, caller, signal)
        if not escalation.escalated:
            return None
        tree["upstream_signal"] = {"model_id": entry.model_id, "signal": signal}
        tree["escalation"] = escalation.decision_tree()
        return escalation

    async def retries(
        self,
        entry: ModelEntry,
        exc: UpstreamError,
        attempts: list[dict[str, Any]],
        failures: dict[str, int],
    ) -> bool:
        """Whether to try ``entry`` again after the failure just listed in ``attempts``
        (``failures``: failed tries per model in this request); waits the back-off first."""
        failed = failures[entry.model_id] = failures.get(entry.model_id, 0) + 1
        delay = self.retry.delay(exc.kind, exc.status, failed)
        if delay is None:
            return False
        attempts[-1]["retried"] = True
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    def end_if_refused(
        self,
        turn: Turn,
        records: list[CallRecord],
        exc: UpstreamError,
        entry: ModelEntry,
        rest: list[ModelEntry],
        *,
        answered: bool = False,
    ) -> None:
        """End the request when the upstream refused the request itself, as any other model
        would: account for the attempts so far and raise the client's error (:func:`rejected`).
        Only a request too long for ``entry``'s context window goes on, if ``rest`` (the
        candidates left, which then keeps only these) has a model with a larger window. When
        the request is ``answered`` already (the primary's answer that deferred), it goes on
        and that answer is relayed if no escalation model takes it."""
        if not exc.rejects_request or answered:
            return
        if exc.exceeds_context:
            rest[:] = [e for e in rest if e.context_window > entry.context_window]
            if rest:
                return
        self.account(turn, records)
        raise rejected(exc, entry) from None

    def _answer(
        self,
        turn: Turn,
        body: dict[str, Any],
        usage: Usage,
        record: CallRecord,
        records: list[CallRecord],
        notice: str | None,
    ) -> ChatOutcome:
        """The client's answer; the turn's accounting (``account``) travels with it, to
        run once the answer has left (see :meth:`complete`)."""
        adm = turn.adm
        out = dict(body)
        out.pop("timings", None)
        out["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens or 0},
        }
        total = exact_sum(r.cost_usd for r in records)
        headers = {
            **route_headers(record.entry),
            "x-soma-cost": f"{total:f}",
            "x-soma-usage-source": usage.source,
            **self.gate_headers(adm),
        }
        if notice:
            headers["x-soma-escalation-notice"] = notice
        # In the request's context (its trace span and log fields), wherever it runs.
        accounting = partial(contextvars.copy_context().run, self.account, turn, records)
        return ChatOutcome(out, headers, accounting)
