"""The per-process cache of reusable verdicts: conditions, expiry, bounds."""

from __future__ import annotations

from typing import Any

from somaagent.domain.policy import Verdict
from somaagent.domain.policy_reuse import Reuse
from somaagent.service.verdict_cache import VerdictCache

ALLOW = Verdict("allow", ("within every budget: b",), "m", None)
REUSE = Reuse(ttl_s=10, equal=(("model",),), lengths=(), at_most=((("wc",), ("left",)),))


def doc(wc: int, left: int = 100, model: str = "m") -> dict[str, Any]:
    return {"model": model, "wc": wc, "left": left}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hit_only_while_the_conditions_hold_and_until_expiry() -> None:
    clock = Clock()
    cache = VerdictCache(clock=clock)
    assert cache.get("k", doc(1)) is None
    cache.put("k", doc(1), ALLOW, REUSE, "evt-1")
    hit = cache.get("k", doc(50))
    assert hit is not None and hit.verdict == ALLOW and hit.source_event_id == "evt-1"
    assert cache.get("k", doc(101)) is None  # over what is left
    assert cache.get("k", doc(5, model="x")) is None
    assert cache.get("other", doc(5)) is None
    clock.now += 10.001
    assert cache.get("k", doc(5)) is None  # expired
    assert (cache.hits, cache.misses) == (1, 5)


def test_zero_ttl_is_not_kept_and_sizes_are_bounded() -> None:
    cache = VerdictCache(max_keys=3, per_key=2)
    cache.put("k", doc(1), ALLOW, Reuse(0, (), (), ()), "e")
    assert len(cache) == 0
    for i in range(5):
        cache.put("k", doc(1, model=f"m{i}"), ALLOW, REUSE, f"e{i}")
    assert len(cache) == 2  # the newest two entries of the key
    assert cache.get("k", doc(1, model="m4")) is not None
    assert cache.get("k", doc(1, model="m0")) is None
    for key in ("a", "b", "c", "d"):
        cache.put(key, doc(1), ALLOW, REUSE, "e")
    assert cache.get("k", doc(1, model="m4")) is None  # the oldest key went first
    assert cache.get("d", doc(1)) is not None
    cache.clear()
    assert len(cache) == 0
