"""Rankings memoised between requests give exactly the decisions computed afresh."""

from __future__ import annotations

import itertools
from types import MappingProxyType

from somaagent.domain.routing import RankingMemo, RouterFlags, decide
from tests.unit.domain.routing.test_selection import (
    GREETING,
    LONG,
    ON,
    RISKY,
    ranked_catalog,
    stats,
)


def test_memoised_decisions_equal_fresh_ones_and_follow_every_input() -> None:
    catalog = ranked_catalog()
    memo = RankingMemo()
    quiet = MappingProxyType({"e-cheap": stats(1000, 1, 500.0)})
    slow = MappingProxyType({"e-cheap": stats(1000, 1, 5000.0), "e-mid": stats(900, 0, 100.0)})
    cases = itertools.product(
        (quiet, slow, quiet),  # a new snapshot object invalidates the memo
        ("developer", "support"),
        ("member", "developer"),
        (ON, RouterFlags(), RouterFlags(escalation_enabled=True, slm_enabled=True)),
        (frozenset(), frozenset({"e-mid"}), frozenset({"e-cheap", "p-main"})),
        (GREETING, RISKY, LONG),
    )
    seen = set()
    for figures, persona, role, flags, circuits, classification in cases:
        kwargs = dict(
            catalog=catalog,
            persona=persona,
            role=role,
            flags=flags,
            classification=classification,
            stats=figures,
            open_circuits=circuits,
        )
        fresh = decide(**kwargs)  # type: ignore[arg-type]
        memoised = decide(**kwargs, memo=memo)  # type: ignore[arg-type]
        assert memoised == fresh
        assert memoised.decision_tree() == fresh.decision_tree()
        seen.add(memoised.model.model_id)
    assert len(seen) >= 3  # the inputs do change the answer
