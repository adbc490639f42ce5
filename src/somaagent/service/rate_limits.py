"""Rate-limit admission of one chat request, and the settle of its token holds.

A caller whose key and tenant have no limits costs nothing here (no Redis call). For one
that has, the request is admitted or refused before its budget reservation and policy
verdict, so a refused request spends nothing else. It counts in each of its scopes (its
key's limits, its tenant's, which every key of the tenant shares): both are asked in one
round trip, and a request one scope refuses is withdrawn from the other, as if never
admitted. An admitted one keeps its :class:`RateHolds`, which the request's accounting
settles to the tokens all its attempts used (``ChatService.account``) and which are
released (settled to 0) when the request ends without being accounted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from somaagent.domain.chat_request import ChatRequest, RequestError
from somaagent.domain.identity import Caller
from somaagent.domain.randomness import random_bits
from somaagent.domain.rate_limits import (
    RateDecision,
    RateLimits,
    rate_headers,
    rate_refusal,
    tightest_headers,
)
from somaagent.domain.routing import ModelEntry
from somaagent.domain.worst_case import prompt_token_bound

__all__ = ["RateGate", "RateHold", "RateHolds", "RateLimiterPort", "scopes_of"]

log = logging.getLogger("somaagent.rate_limits")


class RateLimiterPort(Protocol):
    async def admit(
        self, key_id: str, hold_id: str, limits: RateLimits, tokens: int
    ) -> RateDecision: ...

    def settle(self, key_id: str, hold_id: str, tokens: int) -> Awaitable[bool]: ...

    def withdraw(self, key_id: str, hold_id: str) -> Awaitable[bool]: ...


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a request counts: its key's limits (``id`` the key id) or its tenant's
    (``tenant:<tenant>``, ``tenant`` set)."""

    id: str
    limits: RateLimits
    tenant: str | None = None


def scopes_of(caller: Caller) -> list[Scope]:
    """The caller's limited scopes: its key's, then its tenant's."""
    scopes: list[Scope] = []
    if caller.limits is not None:
        scopes.append(Scope(caller.key_id, caller.limits))
    if caller.tenant_limits is not None:
        scopes.append(Scope(f"tenant:{caller.tenant}", caller.tenant_limits, caller.tenant))
    return scopes


@dataclass
class RateHold:
    """An admitted request's place in its key's limits, until it is settled once."""

    gate: RateGate
    key_id: str
    hold_id: str
    limits: RateLimits
    decision: RateDecision
    settled: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of the answer."""
        return rate_headers(self.limits, self.decision)

    def settle(self, tokens: int) -> None:
        """Count the tokens the request used in place of its hold (once; later calls are
        no-ops). Returns at once: the settle is written in the background."""
        if self.settled:
            return
        self.settled = True
        if self.limits.tpm is None:
            return  # only the request was counted, at its admission
        self.gate.in_background(self.key_id, self.hold_id, tokens)

    def release(self) -> None:
        """Settle to 0 tokens if nothing settled it (a request refused after admission)."""
        self.settle(0)


@dataclass(frozen=True, slots=True)
class RateHolds:
    """An admitted request's holds, one per scope it counts in, settled together."""

    holds: tuple[RateHold, ...]

    @property
    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers: per dimension, the scope with the least left."""
        if len(self.holds) == 1:
            return self.holds[0].headers
        return tightest_headers([(h.limits, h.decision) for h in self.holds])

    def settle(self, tokens: int) -> None:
        for hold in self.holds:
            hold.settle(tokens)

    def release(self) -> None:
        for hold in self.holds:
            hold.release()


@dataclass
class RateGate:
    """Check callers' rate limits (see the module docstring)."""

    limiter: RateLimiterPort
    unavailable: tuple[type[Exception], ...]
    on_refused: Callable[[Caller, str], None] | None = None
    on_model_refused: Callable[[str, str], None] | None = None  # (model id, limit)
    close: Callable[[], Awaitable[None]] | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)

    async def admit(self, request: ChatRequest, caller: Caller) -> RateHolds | None:
        """The request's holds; None when neither its key nor its tenant has limits. Raises
        ``RequestError``: 429 (a limit is reached, with ``Retry-After``), 400 (its worst
        case exceeds a tokens limit by itself), 503 (Redis is unreachable: the limits
        hold, so the request waits)."""
        scopes = scopes_of(caller)
        if not scopes:
            return None
        tokens = (
            prompt_token_bound(request.messages) + request.max_tokens
            if any(s.limits.tpm is not None for s in scopes)
            else 0
        )
        hold_id = f"{random_bits(64):016x}"
        pending = asyncio.ensure_future(self._admit_all(scopes, hold_id, tokens))
        try:
            decisions = await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The request was cancelled (its client left) while Redis decided: holds it
            # was given are released, instead of lapsing only after the hold lifetime.
            pending.add_done_callback(partial(self._abandoned_all, scopes, hold_id))
            raise
        except self.unavailable as exc:
            raise RequestError(
                503,
                f"cannot check this API key's rate limits right now: {exc}",
                code="rate_limit_unavailable",
                kind="server_error",
                headers={"retry-after": "1"},
            ) from None
        pairs = list(zip(scopes, decisions, strict=True))
        refused = [(s, d) for s, d in pairs if not d.admitted]
        if not refused:
            return RateHolds(tuple(RateHold(self, s.id, hold_id, s.limits, d) for s, d in pairs))
        for scope, decision in pairs:
            if decision.admitted:  # another scope refused it: it never happened here either
                self.withdraw(scope.id, hold_id)
        # The refusal the client must wait out: one that can never fit, else the longest.
        scope, decision = max(refused, key=lambda r: (r[1].status == "too_large", r[1].retry_ms))
        if self.on_refused is not None:
            prefix = "" if scope.tenant is None else "tenant_"
            self.on_refused(caller, prefix + decision.status)
        raise rate_refusal(scope.limits, decision, tokens, scope.tenant)

    async def _admit_all(
        self, scopes: list[Scope], hold_id: str, tokens: int
    ) -> list[RateDecision]:
        """Each scope's decision; all asked at once (one round trip on the pipelined
        connection). When one fails, the others' admissions are withdrawn."""
        if len(scopes) == 1:
            only = scopes[0]
            return [await self.limiter.admit(only.id, hold_id, only.limits, tokens)]
        results = await asyncio.gather(
            *(self.limiter.admit(s.id, hold_id, s.limits, tokens) for s in scopes),
            return_exceptions=True,
        )
        decisions = [r for r in results if isinstance(r, RateDecision)]
        if len(decisions) == len(results):
            return decisions
        for scope, result in zip(scopes, results, strict=True):
            if isinstance(result, RateDecision) and result.admitted:
                self.withdraw(scope.id, hold_id)
        raise next(r for r in results if isinstance(r, BaseException))

    def _abandoned_all(
        self, scopes: list[Scope], hold_id: str, pending: asyncio.Future[list[RateDecision]]
    ) -> None:
        if pending.cancelled() or pending.exception() is not None:
            return
        for scope, decision in zip(scopes, pending.result(), strict=True):
            if decision.admitted:
                RateHold(self, scope.id, hold_id, scope.limits, decision).release()

    def withdraw(self, key_id: str, hold_id: str) -> None:
        """Take an admitted request back out of ``key_id``'s window, in the background."""
        self._track(self._settle(self.limiter.withdraw(key_id, hold_id), key_id, None))

    async def admit_model(self, entry: ModelEntry, request: ChatRequest) -> RateHold | RateDecision:
        """A hold on ``entry``'s own limits (its provider's quota, shared by every gateway
        through Redis) for one attempt, or the decision that refused it. Raises one of
        ``unavailable`` when Redis cannot be reached."""
        limits = entry.rate_limits
        assert limits is not None
        tokens = (
            prompt_token_bound(request.messages) + request.max_tokens
            if limits.tpm is not None
            else 0
        )
        scope, hold_id = f"model:{entry.model_id}", f"{random_bits(64):016x}"
        pending = asyncio.ensure_future(self.limiter.admit(scope, hold_id, limits, tokens))
        try:
            decision = await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(partial(self._abandoned, scope, hold_id, limits))
            raise
        if decision.admitted:
            return RateHold(self, scope, hold_id, limits, decision)
        if self.on_model_refused is not None:
            self.on_model_refused(entry.model_id, decision.status)
        return decision

    def _abandoned(
        self, key_id: str, hold_id: str, limits: RateLimits, pending: asyncio.Future[RateDecision]
    ) -> None:
        if pending.cancelled() or pending.exception() is not None:
            return
        decision = pending.result()
        if decision.admitted:
            RateHold(self, key_id, hold_id, limits, decision).release()

    def in_background(self, key_id: str, hold_id: str, tokens: int) -> None:
        """Send the settle now (it goes out ahead of any later admission on the connection)
        and wait for its reply in a task."""
        self._track(self._settle(self.limiter.settle(key_id, hold_id, tokens), key_id, tokens))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    @staticmethod
    async def _settle(work: Awaitable[bool], key_id: str, tokens: int | None) -> None:
        """Await a settle (``tokens`` used) or a withdrawal (None) sent in the background."""
        try:
            await work
        except Exception as exc:  # its hold lapses after the hold lifetime instead
            what = "withdrawal" if tokens is None else f"settle ({tokens} tokens)"
            log.warning("rate-limit %s in scope %s failed: %s", what, key_id, exc)

    async def aclose(self) -> None:
        """Wait for the settles under way, then close the limiter's connection."""
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if self.close is not None:
            await self.close()
