"""The policy's reuse conditions against the real OPA engine: whenever they admit a new
input, evaluating that input gives the same verdict; only plain allows are reusable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from somaagent.adapters.opa import InProcessPolicyEngine, RestPolicyEngine, load_policy_bundle
from somaagent.domain.policy import budget_input
from tests.integration.test_opa_engine import (
    BIG,
    POLICY_DIR,
    SMALL,
    approval,
    budget,
    doc,
    opa_url,  # noqa: F401 - the module fixture
)

ON_EXCEED = ("downgrade", "pause", "require_approval", "deny")
MODELS = (SMALL, "mid-1b", BIG)


@pytest.fixture(scope="module")
def engine() -> Iterator[InProcessPolicyEngine]:
    with InProcessPolicyEngine(load_policy_bundle(POLICY_DIR)) as e:
        yield e


def _maybe(rng: random.Random, top: int) -> int | None:
    return None if rng.random() < 0.35 else rng.randint(0, top)


def random_budget(rng: random.Random, i: int) -> dict[str, Any]:
    limit = (_maybe(rng, 3000), _maybe(rng, 60_000), _maybe(rng, 900_000))
    return _budget_with(
        rng,
        budget_id=f"bud_{i}",
        on_exceed=rng.choice(ON_EXCEED),
        limit=limit,
        threshold=None if rng.random() < 0.6 else rng.randint(0, 40_000),
    )


def _budget_with(
    rng: random.Random,
    *,
    budget_id: str,
    on_exceed: str,
    limit: tuple[int | None, ...],
    threshold: int | None,
) -> dict[str, Any]:
    def used(top: int | None) -> int:
        return 0 if top is None else rng.randint(0, top + 200)

    return dict(
        budget_input(
            budget_id=budget_id,
            scope="tenant",
            persona=None,
            window="daily",
            window_key="2026-11-22",
            resets_at=None,
            on_exceed=on_exceed,  # type: ignore[arg-type]
            limit={"tokens": limit[0], "usd_nano": limit[1], "gpu_us": limit[2]},
            spent={"tokens": used(limit[0]), "usd_nano": used(limit[1]), "gpu_us": used(limit[2])},
            reserved={
                "tokens": used(limit[0]) // 4,
                "usd_nano": used(limit[1]) // 4,
                "gpu_us": used(limit[2]) // 4,
            },
            approval_above_usd_nano=threshold,
        )
    )


def random_candidates(rng: random.Random) -> list[dict[str, Any]]:
    models = rng.sample(MODELS, rng.randint(1, 3))
    return [
        {
            "model_id": m,
            "tier": "primary",
            "worst_case": {
                "tokens": rng.randint(1, 1500),
                "usd_nano": rng.randint(0, 30_000),
                "gpu_us": rng.randint(0, 400_000),
            },
        }
        for m in models
    ]


def random_doc(rng: random.Random) -> dict[str, Any]:
    budgets = [random_budget(rng, i) for i in range(rng.randint(0, 3))]
    candidates = random_candidates(rng)
    chosen = rng.choice(candidates)["model_id"]
    d = doc(*budgets, chosen=chosen, candidates=candidates)
    d["request"] = {**d["request"], "prompt_hash": f"{rng.getrandbits(256):064x}"}
    if rng.random() < 0.2:
        d["approval"] = approval(model_id=chosen, prompt=d["request"]["prompt_hash"])
    return d


def variant(rng: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    """Another call of the same caller: new prompt, new worst cases, new spend; now and
    then a changed budget definition, another chosen model or one budget fewer."""
    d = random_doc(rng)
    d["budgets"] = [
        _budget_with(
            rng,
            budget_id=b["budget_id"],
            on_exceed=b["on_exceed"],
            limit=tuple(b["limit"][k] for k in ("tokens", "usd_nano", "gpu_us")),
            threshold=b["approval_above_usd_nano"],
        )
        for b in base["budgets"]
    ]
    if d["budgets"] and rng.random() < 0.1:
        d["budgets"].pop()
    if d["budgets"] and rng.random() < 0.1:
        d["budgets"][0]["approval_above_usd_nano"] = rng.randint(0, 40_000)
    if rng.random() < 0.7:  # mostly the same routed model
        chosen = base["route"]["model_id"]
        cands = [c for c in d["route"]["candidates"] if c["model_id"] != chosen]
        cands.insert(
            rng.randint(0, len(cands)), {**d["route"]["candidates"][0], "model_id": chosen}
        )
        d["route"] = {**d["route"], "model_id": chosen, "candidates": cands}
    return d


def test_reused_verdicts_equal_evaluated_ones(engine: InProcessPolicyEngine) -> None:
    rng = random.Random(20261122)
    hits = misses = reusable = 0
    for _ in range(250):
        base = random_doc(rng)
        verdict, reuse = engine.decide(base)
        assert verdict == engine.evaluate(base)  # decision.verdict is the verdict
        if reuse is None:
            continue
        reusable += 1
        assert verdict.action == "allow"
        captured = reuse.capture(base)
        assert reuse.holds(captured, base)
        for _ in range(6):
            other = variant(rng, base)
            if reuse.holds(captured, other):
                hits += 1
                assert engine.evaluate(other) == verdict, (base, other)
            else:
                misses += 1
    # The generator reaches every case: reusable verdicts, inputs they answer, and not.
    assert reusable >= 40, reusable
    assert hits >= 60, hits
    assert misses >= 60, misses


def test_only_a_plain_allow_is_reusable(engine: InProcessPolicyEngine) -> None:
    plain = engine.decide(doc(budget(limit=(100_000, None, None))))
    assert plain[0].action == "allow" and plain[1] is not None
    assert plain[1].ttl_s == 60
    assert plain[1].lengths == (("budgets",),)
    assert (
        ("route", "candidates", 2, "worst_case", "tokens"),
        ("budgets", 0, "remaining", "tokens"),
    ) in plain[1].at_most
    approved = engine.decide(doc(budget(threshold=100), approval=approval()))
    assert approved[0].action == "allow" and approved[1] is None  # it read the approval
    for d in (
        doc(budget(limit=(100, None, None))),  # downgrade
        doc(budget(on_exceed="pause", limit=(10, None, None))),
        doc(budget(threshold=100)),  # require_approval
        doc(budget(on_exceed="deny", limit=(10, None, None))),
    ):
        verdict, reuse = engine.decide(d)
        assert verdict.action != "allow"
        assert reuse is None


def test_rest_engine_returns_the_same_decision(engine: InProcessPolicyEngine, opa_url: str) -> None:  # noqa: F811
    docs = [doc(), doc(budget(limit=(100_000, 9, None))), doc(budget(limit=(100, None, None)))]

    async def scenario() -> list[Any]:
        async with RestPolicyEngine(opa_url, timeout_s=5) as rest:
            return [await rest.adecide(d) for d in docs]

    assert asyncio.run(scenario()) == [engine.decide(d) for d in docs]
