"""Worst cases remembered per request shape, while what they were computed from holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from somaagent.domain.budgets import Amounts
from somaagent.domain.worst_case import WorstCase

__all__ = ["WorstCases"]

_KEPT = 4096  # remembered shapes; all forgotten when full


@dataclass(frozen=True, slots=True)
class _Entry:
    card: object  # the rate-card entry in effect (None: the catalog's pricing)
    pricing: object
    timeout_s: float
    worst: WorstCase
    units: Amounts


@dataclass
class WorstCases:
    """A call's worst case and its budget units by (model, prompt token bound, max_tokens).

    Valid only while the rate-card entry in effect, the catalog entry's pricing (both
    compared by identity: a new card version or a reloaded catalog is a new object) and the
    upstream timeout are the ones it was computed with; otherwise it is computed again.
    """

    _entries: dict[tuple[str, int, int], _Entry] = field(default_factory=dict)

    def get(
        self,
        key: tuple[str, int, int],
        *,
        card: object,
        pricing: object,
        timeout_s: float,
        compute: Callable[[], tuple[WorstCase, Amounts]],
    ) -> tuple[WorstCase, Amounts]:
        hit = self._entries.get(key)
        if (
            hit is not None
            and hit.card is card
            and hit.pricing is pricing
            and hit.timeout_s == timeout_s
        ):
            return hit.worst, hit.units
        worst, units = compute()
        if len(self._entries) >= _KEPT:
            self._entries.clear()
        self._entries[key] = _Entry(card, pricing, timeout_s, worst, units)
        return worst, units

    def __len__(self) -> int:
        return len(self._entries)
