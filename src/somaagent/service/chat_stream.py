"""Streamed chat completions: SSE pass-through with exact accounting, even when cut short.

The first upstream chunk is awaited before the response starts, so a dead upstream still
falls back to the next candidate. Usage: the upstream's own report when it sends one, else
counted with the model's tokenizer. The usage chunk is forwarded only when the client asked
(``stream_options.include_usage``), and synthesised from our count when the upstream sent
none. The call's cost follows as an SSE comment (``: soma {...}``) before ``[DONE]``.
A client that disconnects closes the upstream request; the tokens produced so far are
still accounted (in a background task) and the turn is recorded as interrupted.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from somaagent.adapters.upstream import (
    StreamAccumulator,
    StreamChunk,
    StreamEvent,
    StreamSummary,
    UpstreamError,
    Usage,
)
from somaagent.domain.chat_request import ChatRequest
from somaagent.domain.identity import Caller, RequestContext
from somaagent.domain.money import exact_sum
from somaagent.domain.routing import Decision, ModelEntry
from somaagent.domain.routing.signals import signal_pending, upstream_signal
from somaagent.service.admission import Admission
from somaagent.service.call_events import CallRecord
from somaagent.service.chat import ChatService, Turn, route_headers
from somaagent.service.upstream_slots import Slot

__all__ = ["StreamBody", "open_stream"]

_DONE = b"data: [DONE]\n\n"


async def open_stream(
    service: ChatService,
    request: ChatRequest,
    caller: Caller,
    ctx: RequestContext,
    received: float,
    approval_id: str | None = None,
) -> tuple[dict[str, str], StreamBody]:
    """Connect to the first working candidate; return the headers and the SSE body."""
    decision = service.route(request, caller)
    hold = await service.limits.admit(request, caller) if service.limits is not None else None
    try:
        adm, candidates = await service.admit(request, caller, ctx, decision, approval_id)
    except BaseException:
        if hold is not None:
            hold.release()
        raise
    handed_over = False
    try:
        turn = service.new_turn(request, caller, ctx, decision, adm, hold)
        headers, body = await _connect(service, turn, received, decision, candidates)
        handed_over = True
        if hold is not None:
            headers.update(hold.headers)
        return headers, body
    except asyncio.CancelledError:
        handed_over = True  # ``_connect`` left the accounting to a task of its own
        raise
    finally:
        if not handed_over:
            await service.finish(adm)
            if hold is not None:
                hold.release()  # when no accounting settled it


async def _connect(
    service: ChatService,
    turn: Turn,
    received: float,
    decision: Decision,
    candidates: list[ModelEntry],
) -> tuple[dict[str, str], StreamBody]:
    request, caller, adm = turn.request, turn.caller, turn.adm
    failed: list[CallRecord] = []
    reason: str = decision.reason
    queue = list(candidates)
    deferred: _Deferred | None = None  # the primary's whole answer, which was a signal
    failures: dict[str, int] = {}
    current: _Stream | None = None  # the attempt in flight
    try:
        while queue:
            entry = queue.pop(0)
            up = service.upstreams[entry.model_id]
            slot = await service.ready(turn, entry, queue)
            if slot is None:
                continue
            state = current = _Stream(service, turn, entry, failed, reason, received, slot)
            upstream = state.start(adm)
            try:
                first = await upstream.__anext__()
            except (UpstreamError, StopAsyncIteration) as exc:
                current = None
                await upstream.aclose()
                slot.release()
                error = (
                    exc
                    if isinstance(exc, UpstreamError)
                    else UpstreamError("protocol", "stream ended before any chunk")
                )
                record = await service.attempt_failed(
                    state.span,
                    adm,
                    entry,
                    error,
                    turn.attempts,
                    state.started,
                    received,
                    reason,
                    slot,
                )
                failed.append(record)
                service.end_if_refused(
                    turn, failed, error, entry, queue, answered=deferred is not None
                )
                if await service.retries(entry, error, turn.attempts, failures):
                    queue.insert(0, entry)
                else:
                    reason = "fallback"
                continue
            up.breaker.record_success(service.clock())
            state.attempt = {"model_id": entry.model_id, "status": "ok"}
            turn.attempts.append(state.attempt)
            head = _Head([first])
            if deferred is None and entry.tier != "escalation" and service.flags.escalation_enabled:
                signal = await head.peek(upstream, state.acc)
                escalation = service.escalate_on(signal, entry, request, caller, turn.tree)
                if escalation is not None:
                    deferred = await _Deferred.take(state, head, upstream)
                    current = None
                    reason = escalation.reason
                    queue = [e for e in service.candidates(escalation) if e.tier == "escalation"]
                    continue
            current = None
            return _headers(service, entry, adm), StreamBody(state, head, upstream)
    except asyncio.CancelledError:
        _cut_short(service, current, failed, turn)
        raise
    if deferred is not None:
        return deferred.relay()
    service.all_failed(turn, failed)


def _cut_short(
    service: ChatService, current: _Stream | None, failed: list[CallRecord], turn: Turn
) -> None:
    """The opening was cancelled (the client left before the answer started: a long
    prompt's prefill, a retry's back-off, a head held back while it could be a signal).
    Close the upstream request in flight and account for everything so far, in a task of
    its own: the attempt in flight as ``interrupted`` with the tokens it produced, the
    attempts that failed before it, the turn as interrupted."""
    if current is not None:
        if current.attempt is not None:
            current.attempt["status"] = "interrupted"
        else:
            turn.attempts.append({"model_id": current.entry.model_id, "status": "interrupted"})
        assert current.upstream is not None  # set as the attempt started
        current.abandon(current.upstream)
        return

    async def account() -> None:
        try:
            service.account(turn, failed, interrupted=True)
        finally:
            await service.finish(turn.adm)

    _in_background(service, account())


def _in_background(service: ChatService, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    service.background.add(task)
    task.add_done_callback(service.background.discard)


def _headers(service: ChatService, entry: ModelEntry, adm: Admission | None) -> dict[str, str]:
    return {
        **route_headers(entry),
        **service.gate_headers(adm),
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }


class _Head:
    """The events read from an upstream before the answer is relayed (at least its first
    chunk), and the error that ended it there, if one did."""

    def __init__(self, events: list[StreamEvent]) -> None:
        self.events = events
        self.error: UpstreamError | None = None

    @property
    def summary(self) -> StreamSummary | None:
        last = self.events[-1]
        return last if isinstance(last, StreamSummary) else None

    async def peek(
        self, upstream: AsyncGenerator[StreamEvent, None], acc: StreamAccumulator
    ) -> str | None:
        """Read on while the answer so far (``acc``, which ``upstream`` feeds) could still
        be a signal (for most answers, up to their first words); when it is one, read it to
        its end. The signal, or None."""
        try:
            while self.summary is None and signal_pending(acc.text):
                self.events.append(await upstream.__anext__())
            signal = upstream_signal(acc.text)
            if signal is None:
                return None
            while self.summary is None:
                self.events.append(await upstream.__anext__())
        except UpstreamError as exc:  # relayed as it would have been mid-stream
            self.error = exc
            return None
        return signal


@dataclass
class _Deferred:
    """A primary's answer that asked for escalation, read whole and already accounted.

    As for an answer that is not streamed, the primary's call is accounted as a fallback,
    and its answer is kept in case no escalation model answers."""

    state: _Stream
    head: _Head
    record: CallRecord
    usage: Usage | None
    upstream: AsyncGenerator[StreamEvent, None]

    @classmethod
    async def take(
        cls,
        state: _Stream,
        head: _Head,
        upstream: AsyncGenerator[StreamEvent, None],
    ) -> _Deferred:
        assert head.summary is not None  # ``peek`` read a signal to its end
        record, usage = await state.record(head.summary, interrupted=False)
        record.status = "fallback"
        state.failed.append(record)
        return cls(state, head, record, usage, upstream)

    def relay(self) -> tuple[dict[str, str], StreamBody]:
        """The escalation failed: the primary's own answer is better than none."""
        state = self.state
        state.failed.remove(self.record)
        self.record.status = "ok"
        state.recorded = (self.record, self.usage)
        state.turn.tree["escalation_failed"] = True
        headers = _headers(state.service, state.entry, state.adm)
        return headers, StreamBody(state, self.head, self.upstream)


class StreamBody:
    """The SSE body: an async iterator of byte chunks whose ``aclose`` also settles a stream
    that was never iterated (an async generator that never started runs no ``finally``, so
    the upstream request would stay open and the attempt would go unaccounted)."""

    def __init__(
        self, state: _Stream, head: _Head, upstream: AsyncGenerator[StreamEvent, None]
    ) -> None:
        self._state, self._upstream = state, upstream
        self._body = state.run(head, upstream)
        self._started = False

    def __aiter__(self) -> StreamBody:
        return self

    @property
    def last(self) -> bool:
        """Whether the chunk just returned ends the answer: the response ends with it, and
        closing the body then publishes the call's events (answer first)."""
        return self._state.last

    async def __anext__(self) -> bytes:
        self._started = True
        return await self._body.__anext__()

    async def aclose(self) -> None:
        if self._started:
            await self._body.aclose()
        else:
            self._state.abandon(self._upstream)


class _Stream:
    def __init__(
        self,
        service: ChatService,
        turn: Turn,
        entry: ModelEntry,
        failed: list[CallRecord],
        reason: str,
        received: float,
        slot: Slot,
    ) -> None:
        self.service, self.turn = service, turn
        self.slot = slot  # released once the upstream request is over
        self.entry, self.failed, self.reason = entry, failed, reason
        self.received = received
        self.started = time.perf_counter()
        self.acc = StreamAccumulator()
        self.body = turn.request.upstream_body(entry.model_id)
        self.upstream: AsyncGenerator[StreamEvent, None] | None = None
        self.adm: Admission | None = None
        self.span: Any = None
        # The attempt's entry in the tree's ``attempts`` once it answered.
        self.attempt: dict[str, Any] | None = None
        # The attempt's record and usage, when it was accounted before it was relayed.
        self.recorded: tuple[CallRecord, Usage | None] | None = None
        # The body runs after the handler has left the request's span and log context:
        # accounting re-enters them so its spans and log lines stay in the request's trace.
        self.context = contextvars.copy_context()
        self.last = False  # the body's next chunk ends the answer

    def start(self, adm: Admission | None) -> AsyncGenerator[StreamEvent, None]:
        """Send the attempt's upstream request (under ``adm``); its stream of events."""
        service, entry = self.service, self.entry
        self.adm = adm
        self.span = service.tracing.start(
            f"chat {entry.model_id}", service.span_attributes(entry, self.turn.request)
        )
        self.upstream = service.upstreams[entry.model_id].client.stream(
            self.body,
            timeout_s=service.timeout(adm, entry),
            traceparent=service.tracing.traceparent(self.span, self.turn.ctx.trace.traceparent),
            accumulator=self.acc,
        )
        return self.upstream

    async def run(
        self, head: _Head, upstream: AsyncGenerator[StreamEvent, None]
    ) -> AsyncGenerator[bytes, None]:
        summary: StreamSummary | None = None
        finished = False
        # Chunks that came in one network read leave in one write (a burst from the
        # upstream, or one whole answer from a fast one); nothing waits for company.
        pending: list[bytes] = []
        read = iter(head.events)
        try:
            event: StreamEvent | None = next(read)
            while event is not None:
                if isinstance(event, StreamSummary):
                    summary = event
                    break
                out = self._forward(event)
                if out:
                    pending.append(out)
                if pending and not event.more:
                    yield b"".join(pending)
                    pending = []
                event = next(read, None)
                if event is None:  # the head is relayed: on with the upstream
                    if head.error is not None:
                        raise head.error
                    event = await upstream.__anext__()
            assert summary is not None
            ending, accounting = await self._ending(summary)
            pending += ending
            finished = self.last = True  # this chunk ends the response (``StreamBody.last``)
            try:
                yield b"".join(pending)
            finally:
                # Answer first: the events are published once the end of the answer is
                # written (or the client left at it), so the client does not wait for them.
                try:
                    accounting()
                finally:
                    await self.service.finish(self.adm)
        except UpstreamError as exc:
            summary = self.acc.summary()
            await self._settle(summary, interrupted=False, error=exc)
            err = {
                "error": {
                    "message": f"upstream failed mid-stream: {exc}",
                    "type": "server_error",
                    "code": "upstream_error",
                }
            }
            pending.append(b"data: " + json.dumps(err).encode() + b"\n\n")
            yield b"".join(pending)
            finished = True
        finally:
            if not finished:
                # The client went away (or we were cancelled): close the upstream request and
                # account for what was produced, outside this (possibly cancelled) task.
                _in_background(self.service, self._interrupted(upstream))

    async def _ending(self, summary: StreamSummary) -> tuple[list[bytes], Callable[[], None]]:
        """The answer's last chunks (the usage chunk if it was counted here, the cost as an
        SSE comment, ``[DONE]``) and the turn's accounting, still to run. The upstream
        request is over: its slot is released."""
        self.slot.release()
        try:
            cost, usage_chunk, notice, accounting = await self._account(summary, interrupted=False)
        except BaseException:
            await self.service.finish(self.adm)
            raise
        trailer = {"cost_usd": f"{cost:f}"}
        if notice:
            trailer["escalation_notice"] = notice
        return [usage_chunk, b": soma " + json.dumps(trailer).encode() + b"\n\n", _DONE], accounting

    def abandon(self, upstream: AsyncGenerator[StreamEvent, None]) -> None:
        """The body was never iterated (the client left before it started): close the
        upstream request and account for what it produced, in the background."""
        _in_background(self.service, self._interrupted(upstream))

    def _forward(self, chunk: StreamChunk) -> bytes:
        if chunk.usage_only and not self.turn.request.include_usage:
            return b""
        return chunk.sse()

    async def _interrupted(self, upstream: AsyncGenerator[StreamEvent, None]) -> None:
        try:
            await upstream.aclose()
        finally:
            self.slot.release()
        await self._settle(self.acc.summary(), interrupted=True)

    async def _settle(
        self, summary: StreamSummary, *, interrupted: bool, error: UpstreamError | None = None
    ) -> tuple[Decimal, bytes, str | None]:
        self.slot.release()
        try:
            cost, chunk, notice, accounting = await self._account(
                summary, interrupted=interrupted, error=error
            )
            accounting()
            return cost, chunk, notice
        finally:
            await self.service.finish(self.adm)

    async def _account(
        self, summary: StreamSummary, *, interrupted: bool, error: UpstreamError | None = None
    ) -> tuple[Decimal, bytes, str | None, Callable[[], None]]:
        """The attempt's cost, the usage chunk to relay (if the upstream sent none), the
        escalation notice, and the turn's accounting (``ChatService.account``, in the
        request's context), left for the caller to run."""
        service, entry = self.service, self.entry
        if self.recorded is None:
            record, usage = await self.record(summary, interrupted=interrupted, error=error)
        else:
            record, usage = self.recorded
            if interrupted:  # a relayed answer, accounted when it was read, cut short
                record.status = "interrupted"
        notice = service.notice(record, self.turn.caller) if record.status == "ok" else None
        if notice:
            self.turn.tree["escalation_notice"] = notice
        records = [*self.failed, record]
        accounting = partial(
            self.context.run,
            service.account,
            self.turn,
            records,
            streaming_ms=summary.measurements.latency_ms,
            interrupted=interrupted,
        )
        chunk = b""
        if usage is not None and summary.usage is None and self.turn.request.include_usage:
            payload = {
                "id": "chatcmpl-usage",
                "object": "chat.completion.chunk",
                "model": entry.model_id,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
            }
            chunk = b"data: " + json.dumps(payload).encode() + b"\n\n"
        total = exact_sum(r.cost_usd for r in records)
        return total, chunk, notice, accounting

    async def record(
        self, summary: StreamSummary, *, interrupted: bool, error: UpstreamError | None = None
    ) -> tuple[CallRecord, Usage | None]:
        """The attempt's record from ``summary`` and its exact usage (None: it could not be
        counted), priced, its budget settled. The upstream request is over: its slot is
        released."""
        self.slot.release()
        service, entry = self.service, self.entry
        up = service.upstreams[entry.model_id]
        try:
            usage = await up.counter.usage_for_stream(self.body, summary)
        except UpstreamError:
            usage = None
        m = summary.measurements
        gpu = service.gpu_ms(m)
        status = "interrupted" if interrupted else ("error" if error else "ok")
        record = CallRecord(
            entry=entry,
            status=status,  # type: ignore[arg-type]
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else summary.content_deltas,
            cached_tokens=(usage.cached_tokens or 0) if usage else 0,
            usage_source=usage.source if usage else "counted",
            latency_ms=m.latency_ms,
            time_to_first_token_ms=m.time_to_first_token_ms,
            queue_delay_ms=(self.started - self.received) * 1000,
            gpu_ms=gpu,
            completion_chars=len(summary.completion_text),
            streamed=True,
            error_code=f"upstream_{error.kind}" if error else None,
            decision_reason=self.reason,
            escalated=entry.tier == "escalation",
        )
        if usage is not None:
            record.cost_usd, record.rate_card_version = service.price(entry, usage, gpu)
        else:
            card = service.rates.current(entry.model_id, datetime.now(UTC))
            record.rate_card_version = card.version if card else "unpriced"
        service.end_span(self.span, record)
        await service.settle(self.adm, entry, record, self.slot)
        return record, usage
