"""When a failed upstream call is tried again on the same upstream, and after how long (pure).

A call that failed fast and for a reason that may pass (the connection refused or lost, a
reused keep-alive connection the server had just closed, a 5xx or 429 from a server that
is loading its model or busy) is tried again on the same upstream, up to ``retries`` more
times per request, after an exponential back-off. A timeout is not retried (the call has
had its time), nor is an answer that is not the wire format, nor a 4xx about the request
itself. Every try is an attempt of its own (event, breaker, budget); when the tries are
used up, the request moves on to the next candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RETRYABLE_STATUS", "RetryPolicy"]

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` more tries of one upstream per request; the n-th waits
    ``backoff_s * 2**(n-1)``, at most ``max_backoff_s``."""

    retries: int = 1
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be between 0 and 10")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValueError("backoff_s must be between 0 and max_backoff_s")

    @staticmethod
    def retryable(kind: str, status: int | None) -> bool:
        """Whether a failure of this kind (and HTTP status) may pass on its own."""
        return kind == "connect" or (kind == "http" and status in RETRYABLE_STATUS)

    def delay(self, kind: str, status: int | None, failures: int) -> float | None:
        """The wait before trying the same upstream again after its ``failures``-th failed
        try in this request; ``None``: move on."""
        if failures < 1 or failures > self.retries or not self.retryable(kind, status):
            return None
        return min(self.max_backoff_s, math.ldexp(self.backoff_s, failures - 1))
