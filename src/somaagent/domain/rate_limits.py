"""Rate limits of API keys and tenants: requests and tokens per sliding window (pure logic,
no I/O).

A key may carry a requests-per-minute limit (``rpm``), a tokens-per-minute limit (``tpm``),
both or neither; so may its tenant, whose limits all its keys share (a request counts in
both, and must fit both). Their state lives in Redis (``adapters.redis_rate_limit``), so every
gateway replica sees the same counts, on the Redis server's clock, and a decision is one
atomic script: the limits hold across replicas exactly, not per process.

* **Requests:** a request is admitted when fewer than ``rpm`` requests were admitted in the
  last window (60 s). Each admitted request counts, whatever its outcome.
* **Tokens:** a request is admitted when the tokens of the calls settled in the last window,
  plus the holds of the calls still in flight, plus this request's worst case (the budget's
  prompt-token bound + ``max_tokens``), stay within ``tpm``. When the call ends its hold is
  replaced by the tokens it really used (all its attempts), counted at that moment. A hold
  whose call never settles (its gateway died) lapses after the hold lifetime. A request whose
  worst case alone exceeds ``tpm`` can never be admitted: it is refused with 400, not 429.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from somaagent.domain.chat_request import RequestError

__all__ = [
    "MAX_LIMIT",
    "RateDecision",
    "RateLimits",
    "check_limit",
    "rate_headers",
    "rate_refusal",
    "tightest_headers",
]

MAX_LIMIT = 1_000_000_000  # far above any real limit; keeps every sum an exact Lua number


def check_limit(name: str, value: int | None) -> int | None:
    """``value`` when it is None or an integer in 1..MAX_LIMIT; ``ValueError`` naming it
    otherwise (0 is refused: revoke a key to stop it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class RateLimits:
    """An API key's limits per window; None = not limited on that dimension."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        check_limit("rpm", self.rpm)
        check_limit("tpm", self.tpm)

    @classmethod
    def of(cls, rpm: int | None, tpm: int | None) -> RateLimits | None:
        """The limits, or None when neither dimension is limited (nothing to check)."""
        return None if rpm is None and tpm is None else cls(rpm, tpm)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What the admission script decided for one request.

    ``status``: ``admitted``; ``requests`` or ``tokens`` (that limit is reached; retry after
    ``retry_ms``); ``too_large`` (the request's worst case exceeds ``tpm`` by itself).
    ``requests_left`` / ``tokens_left``: what remains of each limited dimension once this
    request is counted (admitted) or as it stands (refused); None when not limited.
    """

    status: Literal["admitted", "requests", "tokens", "too_large"]
    retry_ms: int = 0
    requests_left: int | None = None
    tokens_left: int | None = None

    @property
    def admitted(self) -> bool:
        return self.status == "admitted"


def _duration(ms: int) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``250ms``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def rate_headers(limits: RateLimits, decision: RateDecision) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limited dimensions (and, on a refusal, the
    reset of the one reached)."""
    headers: dict[str, str] = {}
    if limits.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(decision.requests_left or 0, 0))
    if limits.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(decision.tokens_left or 0, 0))
    if decision.status in ("requests", "tokens"):
        headers[f"x-ratelimit-reset-{decision.status}"] = _duration(decision.retry_ms)
    return headers


def tightest_headers(held: list[tuple[RateLimits, RateDecision]]) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers of a request admitted in several scopes (its key's
    limits and its tenant's): per dimension, the scope with the least left."""
    headers: dict[str, str] = {}
    for dimension, left in (("requests", "requests_left"), ("tokens", "tokens_left")):
        limited = [
            (max(getattr(d, left) or 0, 0), limits.rpm if dimension == "requests" else limits.tpm)
            for limits, d in held
            if (limits.rpm if dimension == "requests" else limits.tpm) is not None
        ]
        if limited:
            remaining, limit = min(limited)
            headers[f"x-ratelimit-limit-{dimension}"] = str(limit)
            headers[f"x-ratelimit-remaining-{dimension}"] = str(remaining)
    return headers


def rate_refusal(
    limits: RateLimits, decision: RateDecision, worst_tokens: int, tenant: str | None = None
) -> RequestError:
    """The client's error for a request the limits refused: 429 with ``Retry-After`` (whole
    seconds, rounded up) and ``retry-after-ms`` (which the OpenAI SDKs honour), or 400 for
    a request that can never fit. ``tenant``: the tenant whose limits refused it (None:
    the key's)."""
    whose, this = ("the key", "this API key") if tenant is None else (f"tenant {tenant}",) * 2
    headers = rate_headers(limits, decision)
    if decision.status == "too_large":
        return RequestError(
            400,
            f"this request may use up to {worst_tokens} tokens (prompt bound + max_tokens),"
            f" more than {whose}'s limit of {limits.tpm} tokens per minute; lower max_tokens"
            " or shorten the prompt",
            param="max_tokens",
            code="request_too_large",
            headers=headers,
        )
    retry_ms = max(decision.retry_ms, 1)
    headers["retry-after"] = str(math.ceil(retry_ms / 1000))
    headers["retry-after-ms"] = str(retry_ms)
    if decision.status == "requests":
        what = f"{limits.rpm} requests per minute"
    else:
        what = f"{limits.tpm} tokens per minute (this request may use {worst_tokens})"
    return RequestError(
        429,
        f"rate limit reached for {this}: {what}; retry in {retry_ms / 1000:.3f} s",
        code="rate_limit_exceeded",
        kind="rate_limit_error",
        headers=headers,
    )
