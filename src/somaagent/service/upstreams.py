"""The live models a gateway calls: each one's client, token counter, circuit breaker and
slots, and the steps of an attempt that only they decide (which peer takes a call when a
model is full, the wait for a slot, room in the model's own quota, the call that gives its
slot back)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from somaagent.adapters.upstream import UpstreamClient, UpstreamResult, UsageCounter
from somaagent.domain.chat_request import ChatRequest
from somaagent.domain.rate_limits import RateDecision
from somaagent.domain.routing import CircuitBreaker, ModelEntry
from somaagent.service.rate_limits import RateGate
from somaagent.service.upstream_slots import Shed, Slot, UpstreamSlots

__all__ = ["Upstream", "gives_way", "send", "slot_for", "within_quota"]

log = logging.getLogger("somaagent.chat")


@dataclass
class Upstream:
    """One live model: its client, exact token counter, circuit breaker and, when the
    catalog caps its concurrency, its slots."""

    entry: ModelEntry
    client: UpstreamClient
    counter: UsageCounter
    breaker: CircuitBreaker
    slots: UpstreamSlots | None = None


def gives_way(
    upstreams: Mapping[str, Upstream],
    entry: ModelEntry,
    attempts: list[dict[str, Any]],
    rest: list[ModelEntry],
    now: float,
) -> bool:
    """Whether ``entry`` is full and a candidate of ``rest`` on the same tier (a peer:
    another replica, a model of the same class) has a slot free and a closed circuit: then
    that peer moves to the front of ``rest``, ``entry`` right after it, and ``attempts``
    lists ``busy``. Once per request, so two full peers never hand a call back and forth."""
    slots = upstreams[entry.model_id].slots
    if slots is None or slots.has_room() or any(a.get("skipped") == "busy" for a in attempts):
        return False
    for peer in rest:
        up = upstreams[peer.model_id]
        if (
            peer.tier == entry.tier
            and (up.slots is None or up.slots.has_room())
            and up.breaker.available(now)
        ):
            rest.remove(peer)
            rest[:0] = [peer, entry]
            attempts.append(
                {"model_id": entry.model_id, "skipped": "busy", "gave_way_to": peer.model_id}
            )
            return True
    return False


async def slot_for(
    up: Upstream,
    attempts: list[dict[str, Any]],
    deadline_s: float,
    gone: Callable[[], bool] | None = None,
) -> Slot | None:
    """A place on ``up`` for the next attempt (at once when the catalog sets it no limit),
    waiting in its queue (at most ``deadline_s``) if need be; None when the call was shed,
    which ``attempts`` then lists, or when ``gone`` says its client left while it waited."""
    slots = up.slots
    if slots is None:
        return Slot(None, 0.0)
    got = slots.try_take() or await slots.take(deadline_s, gone)
    if isinstance(got, Shed):
        if got.reason == "client_left":
            return None
        attempts.append(
            {
                "model_id": up.entry.model_id,
                "skipped": "overloaded",
                "queue": got.reason,
                "waited_ms": round(got.waited_ms, 3),
            }
        )
        return None
    return got


async def within_quota(
    gate: RateGate,
    entry: ModelEntry,
    request: ChatRequest,
    slot: Slot,
    attempts: list[dict[str, Any]],
) -> Slot | None:
    """``slot`` with a hold on ``entry``'s rate limits (its provider's quota) for the
    attempt; None, the slot given back and ``attempts`` listing ``rate_limited``, when the
    quota has no room. Redis unreachable: the attempt goes ahead unheld (the provider's own
    429 is then retried or falls back as any upstream refusal)."""
    try:
        got = await gate.admit_model(entry, request)
    except gate.unavailable as exc:
        log.warning("rate limits of %s unchecked, the call goes ahead: %s", entry.model_id, exc)
        return slot
    except BaseException:
        slot.release()
        raise
    if isinstance(got, RateDecision):
        slot.release()
        attempts.append(
            {
                "model_id": entry.model_id,
                "skipped": "rate_limited",
                "limit": got.status,
                "retry_after_ms": got.retry_ms,
            }
        )
        return None
    slot.quota = got
    return slot


async def send(
    up: Upstream,
    slot: Slot,
    body: dict[str, Any],
    *,
    timeout_s: float,
    traceparent: str | None,
) -> UpstreamResult:
    """The upstream's answer to ``body``; ``slot`` is released once the call is over."""
    try:
        return await up.client.chat(body, timeout_s=timeout_s, traceparent=traceparent)
    finally:
        slot.release()
