"""The client's errors and headers for a call's attempts: which model answered, what the
upstream refused, and why no upstream answered."""

from __future__ import annotations

import math
from typing import Any

from somaagent.adapters.upstream import UpstreamError
from somaagent.domain.chat_request import RequestError
from somaagent.domain.routing import ModelEntry

__all__ = ["every_upstream_failed", "rejected", "route_headers"]


def route_headers(entry: ModelEntry) -> dict[str, str]:
    """The response headers that say which model answered and on which tier."""
    return {
        "x-soma-model": entry.model_id,
        "x-soma-tier": entry.tier,
        "x-soma-escalated": "true" if entry.tier == "escalation" else "false",
    }


def rejected(exc: UpstreamError, entry: ModelEntry) -> RequestError:
    """The client's error for a 4xx the upstream gave about the request itself."""
    if exc.exceeds_context:
        return RequestError(
            400,
            f"the prompt and max_tokens do not fit the context window of {entry.model_id}"
            f" ({entry.context_window} tokens), nor of any other model this call may use: {exc}",
            param="messages",
            code="context_length_exceeded",
        )
    status = exc.status if exc.status is not None else 400
    return RequestError(status, f"upstream rejected the request: {exc}", code="upstream_rejected")


def every_upstream_failed(attempts: list[dict[str, Any]]) -> RequestError:
    """503 naming each attempt; ``upstream_overloaded`` when none failed and one or more
    models were at their concurrency or rate limit, with a Retry-After: the soonest any of
    them has room (a full queue: 1 s; a rate limit: its window's exact wait). 400
    ``request_too_large`` when the call's worst case exceeds every such tokens limit."""
    tried = (
        ", ".join(f"{a['model_id']}: {a.get('error') or a.get('skipped')}" for a in attempts)
        or "no live upstream"
    )
    full = [a for a in attempts if a.get("skipped") in ("overloaded", "rate_limited")]
    if full and not any("error" in a for a in attempts):
        if all(a.get("limit") == "too_large" for a in full):  # waiting cannot help
            return RequestError(
                400,
                "the prompt and max_tokens exceed the tokens-per-minute limit of every model"
                f" this call may use ({tried})",
                param="max_tokens",
                code="request_too_large",
            )
        wait_ms = min(  # a model the call can never fit gives no time to wait for
            int(a.get("retry_after_ms") or 1000) for a in full if a.get("limit") != "too_large"
        )
        return RequestError(
            503,
            f"every model this call may use is at its concurrency or rate limit ({tried});"
            " retry shortly",
            code="upstream_overloaded",
            kind="server_error",
            headers={
                "retry-after": str(max(1, math.ceil(wait_ms / 1000))),
                "retry-after-ms": str(wait_ms),
            },
        )
    return RequestError(
        503, f"every upstream failed ({tried})", code="upstream_unavailable", kind="server_error"
    )
