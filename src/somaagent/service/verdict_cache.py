"""Verdicts the policy declared reusable, kept for the next calls that meet its conditions.

Evaluating the gateway policy costs about 0.7 ms of the gateway's core per call; most calls
are plain allows well inside every budget. The policy says, with each verdict, when that
verdict holds for another input (``domain.policy_reuse``); this cache keeps such verdicts
per (tenant, persona, model) and answers a later input only when every condition holds on
it and the entry has not expired. Anything else (a miss, a non-reusable verdict, a budget
near its limit) is evaluated by the engine. The cache is per process and bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from somaagent.domain.policy import Verdict
from somaagent.domain.policy_reuse import Reuse

__all__ = ["Reused", "VerdictCache"]


@dataclass(frozen=True, slots=True)
class Reused:
    """A verdict answered from the cache, and the event of the evaluation that produced it."""

    verdict: Verdict
    source_event_id: str


@dataclass(frozen=True, slots=True)
class _Entry:
    reuse: Reuse
    captured: tuple[tuple[Any, ...], tuple[int, ...]]
    verdict: Verdict
    source_event_id: str
    expires: float


class VerdictCache:
    """At most ``max_keys`` keys of at most ``per_key`` entries each (oldest dropped first)."""

    def __init__(
        self,
        *,
        max_keys: int = 4096,
        per_key: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: dict[Hashable, list[_Entry]] = {}
        self._max_keys = max_keys
        self._per_key = per_key
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, doc: Any) -> Reused | None:
        """The cached verdict whose conditions hold on ``doc``, if any."""
        entries = self._entries.get(key)
        if entries:
            now = self._clock()
            for entry in entries:
                if entry.expires > now and entry.reuse.holds(entry.captured, doc):
                    self.hits += 1
                    return Reused(entry.verdict, entry.source_event_id)
        self.misses += 1
        return None

    def put(
        self, key: Hashable, doc: Any, verdict: Verdict, reuse: Reuse, source_event_id: str
    ) -> None:
        """Keep ``verdict`` (evaluated on ``doc``) for the inputs ``reuse`` admits."""
        if reuse.ttl_s <= 0:
            return
        now = self._clock()
        entry = _Entry(reuse, reuse.capture(doc), verdict, source_event_id, now + reuse.ttl_s)
        entries = self._entries.pop(key, [])
        kept = [e for e in entries if e.expires > now and e.captured != entry.captured]
        self._entries[key] = [entry, *kept][: self._per_key]
        while len(self._entries) > self._max_keys:
            del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        """Forget every verdict (the policy changed)."""
        self._entries.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())
