"""The gateway policy (policy/soma/gateway.rego) on the real OPA engine.

Depends on: OPA's Go engine in-process (opa-golib-python-bindings), and for the REST engine
``soma policy serve``'s app, run here under uvicorn on a free 127.0.0.1 port (in a thread,
or as a ``soma policy serve`` subprocess). No stack services are needed.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from somaagent.adapters.opa import (
    InProcessPolicyEngine,
    PolicyUnavailable,
    PolicyUndefined,
    RestPolicyEngine,
    constitution_hash,
    load_policy_bundle,
)
from somaagent.domain.policy import (
    OnExceed,
    PolicyError,
    Verdict,
    budget_input,
    example_input,
    parse_verdict,
)
from somaagent.entrypoints.opa_server import create_app
from tests.conftest import ROOT

POLICY_DIR = ROOT / "policy"
BIG, MID, SMALL = "qwen2.5-coder-0.5b-instruct", "mid-1b", "smollm2-135m-instruct"
DAY1 = datetime(2026, 11, 23, 5, tzinfo=UTC)
DAY2 = datetime(2026, 11, 24, 5, tzinfo=UTC)
CONTRACT = "input does not follow the policy contract"
FAIL_CLOSED = "policy error: no rule decided this input (fail closed)"
DIMS = ("tokens", "usd_nano", "gpu_us")
SEVERITY = {"downgrade": 1, "pause": 2, "require_approval": 3, "deny": 4}


@pytest.fixture(scope="module")
def engine() -> Iterator[InProcessPolicyEngine]:
    with InProcessPolicyEngine(load_policy_bundle(POLICY_DIR)) as e:
        yield e


def cand(model_id: str, tokens: int, usd: int, gpu: int = 0) -> dict[str, Any]:
    return {"model_id": model_id, "tier": "t", "worst_case": dims(tokens, usd, gpu)}


def dims(tokens: int | None, usd: int | None, gpu: int | None) -> Any:
    return {"tokens": tokens, "usd_nano": usd, "gpu_us": gpu}


def budget(
    budget_id: str = "bud_1",
    *,
    on_exceed: OnExceed = "downgrade",
    limit: tuple[int | None, int | None, int | None] = (1000, None, None),
    spent: tuple[int, int, int] = (0, 0, 0),
    threshold: int | None = None,
    resets_at: datetime | None = DAY1,
    persona: str | None = None,
) -> dict[str, Any]:
    return dict(
        budget_input(
            budget_id=budget_id,
            scope="persona" if persona else "tenant",
            persona=persona,
            window="daily",
            window_key="2026-11-22",
            resets_at=resets_at,
            on_exceed=on_exceed,
            limit=dims(*limit),
            spent=dims(*spent),
            reserved=dims(0, 0, 0),
            approval_above_usd_nano=threshold,
        )
    )


CANDIDATES = [cand(SMALL, 300, 8334), cand(MID, 300, 9000), cand(BIG, 300, 20000)]


def doc(
    *budgets: dict[str, Any],
    chosen: str = BIG,
    candidates: list[dict[str, Any]] | None = None,
    approval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = dict(example_input())
    d["route"] = {**d["route"], "model_id": chosen, "candidates": candidates or CANDIDATES}
    d["budgets"] = list(budgets)
    d["approval"] = approval
    return d


def approval(status: str = "approved", model_id: str = BIG, prompt: str = "0" * 64) -> Any:
    return {"id": "apr_1", "status": status, "prompt_hash": prompt, "model_id": model_id}


def test_allow_with_no_budget(engine: InProcessPolicyEngine) -> None:
    assert engine.evaluate(doc()) == Verdict("allow", ("no budget applies",), BIG, None)


def test_allow_within_every_budget(engine: InProcessPolicyEngine) -> None:
    v = engine.evaluate(doc(budget(), budget("bud_2", persona="support", limit=(None, 20000, 1))))
    assert v == Verdict("allow", ("within every budget: bud_1, bud_2",), BIG, None)


def test_exact_integer_boundary(engine: InProcessPolicyEngine) -> None:
    huge = 10**18 + 1  # beyond a float's exact integers
    fits = [cand(BIG, 1, huge), cand(SMALL, 1, 0)]
    at_limit = budget(limit=(None, huge, None), on_exceed="deny")
    assert engine.evaluate(doc(at_limit, candidates=fits)).action == "allow"
    one_short = budget(limit=(None, huge, None), spent=(0, 1, 0), on_exceed="deny")
    v = engine.evaluate(doc(one_short, candidates=fits))
    assert v.action == "deny"
    assert v.reasons[0] == (
        f"budget bud_1 (tenant daily 2026-11-22): usd_nano worst case {huge} > remaining {huge - 1}"
    )


def test_unlimited_dimensions_are_ignored(engine: InProcessPolicyEngine) -> None:
    heavy = [cand(BIG, 10, 10**15, 10**12), cand(SMALL, 10, 1)]
    unlimited = budget(limit=(100, None, None), spent=(0, 10**16, 10**13), on_exceed="deny")
    assert engine.evaluate(doc(unlimited, candidates=heavy)).action == "allow"


def test_downgrade_to_the_cheapest_fitting_candidate(engine: InProcessPolicyEngine) -> None:
    v = engine.evaluate(doc(budget(limit=(None, 10000, None))))
    assert v.action == "downgrade" and v.model_id == SMALL and v.retry_after is None
    assert v.reasons == (
        "budget bud_1 (tenant daily 2026-11-22): usd_nano worst case 20000 > remaining 10000",
        f"downgrade from {BIG} to {SMALL}, the cheapest candidate that fits every budget "
        "(worst case 8334 nano-USD, 300 tokens)",
    )


def test_downgrade_ties_break_on_tokens_then_model_id(engine: InProcessPolicyEngine) -> None:
    tied = [cand(BIG, 300, 900), cand("b", 200, 100), cand("a", 250, 100), cand("c", 200, 100)]
    assert engine.evaluate(doc(budget(limit=(299, None, None)), candidates=tied)).model_id == "b"


def test_downgrade_skips_a_candidate_that_would_need_approval(
    engine: InProcessPolicyEngine,
) -> None:
    gated = budget(limit=(None, 15000, None), threshold=8000)
    # SMALL (8334) and MID (9000) both cross the threshold; only MID has an approval
    v = engine.evaluate(doc(gated, approval=approval(model_id=MID)))
    assert (v.action, v.model_id) == ("downgrade", MID)
    v = engine.evaluate(doc(budget(limit=(None, 15000, None), threshold=100)))
    assert (v.action, v.model_id, v.retry_after) == ("pause", BIG, "2026-11-23T05:00:00Z")


def test_downgrade_that_cannot_fit_becomes_pause(engine: InProcessPolicyEngine) -> None:
    v = engine.evaluate(doc(budget(limit=(100, None, None))))
    assert v == Verdict(
        "pause",
        (
            "budget bud_1 (tenant daily 2026-11-22): tokens worst case 300 > remaining 100",
            "pause: no other candidate fits every budget, so the downgrade cannot be made",
            "retry after 2026-11-23T05:00:00Z, the earliest reset of the exceeded budgets",
        ),
        BIG,
        "2026-11-23T05:00:00Z",
    )


def test_pause_retries_at_the_earliest_reset_of_the_exceeded_budgets(
    engine: InProcessPolicyEngine,
) -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    early_but_fine = budget("bud_0", limit=(10**6, None, None), resets_at=early)
    late = budget("bud_late", on_exceed="pause", limit=(None, 10, None), resets_at=DAY2)
    soon = budget("bud_soon", on_exceed="pause", limit=(None, None, 0), resets_at=DAY1)
    v = engine.evaluate(doc(early_but_fine, late, soon, candidates=[cand(BIG, 1, 20, 5)]))
    assert (v.action, v.retry_after) == ("pause", "2026-11-23T05:00:00Z")
    assert "pause: on_exceed of budget bud_late, bud_soon" in v.reasons
    never = budget("bud_x", on_exceed="pause", limit=(1, None, None), resets_at=None)
    v = engine.evaluate(doc(never))
    assert (v.action, v.retry_after) == ("pause", None)


def test_pause_wins_over_downgrade_even_when_another_model_fits(
    engine: InProcessPolicyEngine,
) -> None:
    v = engine.evaluate(doc(budget(limit=(None, 10000, None)), budget("b2", on_exceed="pause")))
    assert (v.action, v.model_id) == ("downgrade", SMALL)  # b2 (1000 tokens) is not exceeded
    pausing = budget("b2", on_exceed="pause", limit=(None, 10000, None))
    v = engine.evaluate(doc(budget(limit=(None, 10000, None)), pausing))
    assert (v.action, v.model_id) == ("pause", BIG)


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        (("downgrade", "pause", "deny"), "deny"),
        (("require_approval", "pause"), "require_approval"),
        (("deny", "require_approval"), "deny"),
        (("downgrade", "require_approval"), "require_approval"),
    ],
)
def test_the_most_severe_exceeded_budget_decides(
    engine: InProcessPolicyEngine, actions: tuple[OnExceed, ...], expected: str
) -> None:
    budgets = [budget(f"b{i}", on_exceed=a, limit=(10, None, None)) for i, a in enumerate(actions)]
    v = engine.evaluate(doc(*budgets))
    assert (v.action, v.model_id, v.retry_after) == (expected, BIG, None)
    deciding = [f"b{i}" for i, a in enumerate(actions) if a == expected]
    assert any(
        r.startswith(f"{expected}: on_exceed of budget {', '.join(deciding)}") for r in v.reasons
    )


def test_require_approval_above_the_threshold_even_when_it_fits(
    engine: InProcessPolicyEngine,
) -> None:
    v = engine.evaluate(doc(budget(threshold=19999)))
    assert v == Verdict(
        "require_approval",
        (
            "budget bud_1 (tenant daily 2026-11-22): worst case 20000 nano-USD > approval "
            "threshold 19999",
            "no approval presented",
        ),
        BIG,
        None,
    )
    assert engine.evaluate(doc(budget(threshold=20000))).action == "allow"


def test_an_approved_approval_for_this_prompt_and_model_lifts_the_threshold(
    engine: InProcessPolicyEngine,
) -> None:
    v = engine.evaluate(doc(budget(threshold=100), approval=approval()))
    assert v.action == "allow"
    assert v.reasons == (
        "within every budget: bud_1",
        f"approval apr_1 covers {BIG} for this prompt",
    )


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        (approval(status="pending"), "approval apr_1 is pending, not approved"),
        (approval(prompt="f" * 64), "approval apr_1 is for another prompt"),
        (approval(model_id=SMALL), f"approval apr_1 is for model {SMALL}, not {BIG}"),
    ],
)
def test_an_approval_must_be_approved_for_this_prompt_and_model(
    engine: InProcessPolicyEngine, presented: dict[str, Any], reason: str
) -> None:
    v = engine.evaluate(doc(budget(threshold=100), approval=presented))
    assert (v.action, v.reasons[-1]) == ("require_approval", reason)


@pytest.mark.parametrize("on_exceed", ["pause", "require_approval", "deny"])
def test_an_approval_does_not_override_an_exhausted_budget(
    engine: InProcessPolicyEngine, on_exceed: OnExceed
) -> None:
    exhausted = budget(on_exceed=on_exceed, limit=(1000, None, None), spent=(1000, 0, 0))
    v = engine.evaluate(doc(exhausted, approval=approval()))
    assert v.action == on_exceed
    assert v.reasons[-1] == "approval apr_1 does not override an exhausted budget"


def bad_doc(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc(budget(), budget("bud_2", persona="support")))
    *parents, last = path.split(".")
    node: Any = d
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("budgets", KeyError, "budgets is not an array"),
        ("budgets.0.remaining.tokens", 501, "budgets[0]: tokens: want limit and remaining null"),
        ("budgets.0.limit.tokens", 1000.5, "budgets[0]: tokens: want"),
        ("budgets.0.limit.tokens", "1000", "budgets[0]: tokens: want"),
        ("budgets.0.remaining.usd_nano", 0, "budgets[0]: usd_nano: want limit and remaining null"),
        ("budgets.1.persona", None, "budgets[1]: scope is not tenant, or persona with"),
        ("budgets.0.resets_at", "2026-11-23T05:00:00+00:00", "budgets[0]: resets_at is not null"),
        ("budgets.0.on_exceed", "explode", "budgets[0]: on_exceed is not one of"),
        ("budgets.0.approval_above_usd_nano", -1, "budgets[0]: approval_above_usd_nano is not"),
        ("budgets.1", "bud_2", "budgets[1]: not an object"),
        ("route.model_id", "gpt-9", "route.model_id is not among route.candidates"),
        ("route.candidates.0.worst_case.tokens", None, "route.candidates[0]: worst_case.tokens"),
        ("route.candidates.1.model_id", SMALL, "route.candidates[1]: names the same model as"),
        ("request.prompt_hash", "", "request.prompt_hash is not a non-empty string"),
        ("approval", {"id": "a", "status": "approved"}, "approval is not null or an object"),
    ],
)
def test_an_input_off_the_contract_is_denied_with_the_reason(
    engine: InProcessPolicyEngine, path: str, value: Any, problem: str
) -> None:
    v = engine.evaluate(bad_doc(path, value))
    assert (v.action, v.retry_after, v.reasons[0]) == ("deny", None, CONTRACT)
    assert any(r.startswith(problem) for r in v.reasons[1:]), v.reasons


@pytest.mark.parametrize("value", [None, [], "x", 5, {}])
def test_any_input_at_all_gets_a_verdict(engine: InProcessPolicyEngine, value: Any) -> None:
    v = parse_verdict(engine.document("soma/gateway/verdict", value))
    assert (v.action, v.model_id, v.reasons[0]) == ("deny", "", CONTRACT)


# --- the decision against an independent statement of the rules (hypothesis) ---------------


def over(c: Any, b: Any) -> bool:
    return any(b["limit"][d] is not None and c["worst_case"][d] > b["remaining"][d] for d in DIMS)


def oracle(d: Any) -> tuple[str, str, str | None]:
    """Rules 1-4 of the policy, restated in Python: (action, model_id, retry_after)."""
    budgets, cands, a = d["budgets"], d["route"]["candidates"], d.get("approval")
    chosen = next(c for c in cands if c["model_id"] == d["route"]["model_id"])

    def fits(c: Any) -> bool:
        return not any(over(c, b) for b in budgets)

    def needs_approval(c: Any) -> bool:
        limits = [b["approval_above_usd_nano"] for b in budgets]
        crossed = any(t is not None and c["worst_case"]["usd_nano"] > t for t in limits)
        approved = (
            a is not None
            and a["status"] == "approved"
            and a["prompt_hash"] == d["request"]["prompt_hash"]
            and a["model_id"] == c["model_id"]
        )
        return crossed and not approved

    if fits(chosen):
        return ("require_approval" if needs_approval(chosen) else "allow", chosen["model_id"], None)
    exceeded = [b for b in budgets if over(chosen, b)]
    actions = {b["on_exceed"] for b in exceeded}
    options = sorted(
        (c["worst_case"]["usd_nano"], c["worst_case"]["tokens"], c["model_id"])
        for c in cands
        if c is not chosen and fits(c) and not needs_approval(c)
    )
    if actions == {"downgrade"} and options:
        return "downgrade", options[0][2], None
    top = max(actions, key=SEVERITY.__getitem__)
    action = "pause" if top == "downgrade" else top
    resets = [b["resets_at"] for b in exceeded if b["resets_at"] is not None]
    return action, chosen["model_id"], min(resets) if action == "pause" and resets else None


# Small ranges, so that ties, exact fits and every action are all common.
small = st.integers(0, 40)
limits = st.none() | st.integers(0, 90)
spends = st.integers(0, 30)
ON_EXCEED_MOSTLY_DOWNGRADE: list[OnExceed] = ["downgrade"] * 4 + [
    "pause",
    "require_approval",
    "deny",
]
RESETS = [None, DAY1, DAY2, datetime(2026, 11, 23, 4, 59, 59, tzinfo=UTC)]


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.sampled_from(["m-a", "m-b", "m-c", "m-d"]), min_size=1, unique=True))
    # each candidate is "cheap" or not by a factor, so some fit where others do not
    cands = [cand(m, *(draw(small) // draw(st.integers(1, 8)) for _ in DIMS)) for m in ids]
    budgets = []
    for i in range(draw(st.integers(0, 3))):
        limit = tuple(draw(limits) for _ in DIMS)
        b = budget(
            f"b{i}",
            on_exceed=draw(st.sampled_from(ON_EXCEED_MOSTLY_DOWNGRADE)),
            limit=limit,  # type: ignore[arg-type]
            spent=(draw(spends), draw(spends), draw(spends)),
            threshold=draw(small) if draw(st.integers(0, 3)) == 0 else None,
            resets_at=draw(st.sampled_from(RESETS)),
            persona=draw(st.sampled_from([None, "support"])),
        )
        budgets.append(b)
    presented = draw(
        st.none()
        | st.builds(
            approval,
            status=st.sampled_from(["approved", "pending"]),
            model_id=st.sampled_from([*ids, "other"]),
            prompt=st.sampled_from(["0" * 64, "1" * 64]),
        )
    )
    return doc(*budgets, chosen=draw(st.sampled_from(ids)), candidates=cands, approval=presented)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=valid_docs())
def test_every_valid_input_gets_the_verdict_the_rules_give(
    engine: InProcessPolicyEngine, d: dict[str, Any]
) -> None:
    v = engine.evaluate(d)
    assert (v.action, v.model_id, v.retry_after) == oracle(d)
    assert CONTRACT not in v.reasons and FAIL_CLOSED not in v.reasons


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats(-5, 5) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=valid_docs(), data=st.data())
def test_a_damaged_input_is_denied_or_decided_never_left_without_verdict(
    engine: InProcessPolicyEngine, d: dict[str, Any], data: st.DataObject
) -> None:
    *parents, last = data.draw(st.sampled_from(list(paths(d))))
    node: Any = d
    for key in parents:
        node = node[key]
    node[last] = data.draw(json_values)
    v = engine.evaluate(d)  # a PolicyError here (no verdict) fails the test
    try:
        valid = engine.document("soma/gateway/input_valid", d)
    except PolicyUndefined:
        valid = False
    errors = engine.document("soma/gateway/input_errors", d)
    assert valid == (errors == [])  # the fast check and the diagnostics agree
    if valid:
        assert (v.action, v.model_id, v.retry_after) == oracle(d)
    else:
        assert (v.action, v.reasons) == ("deny", (CONTRACT, *sorted(errors)))
    assert FAIL_CLOSED not in v.reasons


# --- compilation, bundles, concurrency ------------------------------------------------------


def test_bundle_version_and_constitution_hash(tmp_path: Path) -> None:
    bundle = load_policy_bundle(POLICY_DIR)
    assert set(bundle.files) == {"soma/gateway.rego"}
    copied = tmp_path / "p"
    shutil.copytree(POLICY_DIR, copied)
    assert load_policy_bundle(copied).version == bundle.version  # location does not count
    (copied / "soma" / "extra.rego").write_text("package soma.extra\n\nx := 1\n")
    assert load_policy_bundle(copied).version != bundle.version
    constitution = (POLICY_DIR / "constitution.md").read_bytes()
    assert constitution_hash(POLICY_DIR) == hashlib.sha256(constitution).hexdigest()


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("package soma.broken\n\nallow if {\n\tinput.a ==\n}\n", "broken.rego:5: rego_parse_error"),
        ("package soma.broken\n\nallow if nope(input.a)\n", "broken.rego:3: rego_type_error"),
        ("package soma.broken\n\nallow if {\n\tx := 1\n\tx := 2\n}\n", "broken.rego:5:"),
    ],
)
def test_a_policy_that_does_not_compile_names_file_and_line(
    tmp_path: Path, source: str, where: str
) -> None:
    shutil.copytree(POLICY_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "soma" / "broken.rego").write_text(source)
    with pytest.raises(PolicyError) as info:
        InProcessPolicyEngine(load_policy_bundle(tmp_path))
    assert f"{tmp_path}/soma/{where}" in str(info.value)


def test_unloadable_policy_directories(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy_bundle(tmp_path / "missing")
    with pytest.raises(PolicyError, match="no .rego files"):
        load_policy_bundle(tmp_path)
    (tmp_path / "bad.rego").write_bytes(b"package x\n# \xff\n")
    with pytest.raises(PolicyError, match="cannot read policy file .*bad.rego"):
        load_policy_bundle(tmp_path)
    with pytest.raises(PolicyError, match="cannot read the constitution"):
        constitution_hash(tmp_path)


def test_threads_share_one_engine_safely(engine: InProcessPolicyEngine) -> None:
    docs = [doc(budget(limit=(None, n * 1000, None))) for n in range(1, 25)]
    expected = [engine.evaluate(d) for d in docs]
    results: dict[int, list[Verdict]] = {}

    def work(worker: int) -> None:
        results[worker] = [engine.evaluate(d) for d in docs]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[w] == expected for w in range(4))
    assert {v.action for v in expected} == {"downgrade", "pause", "allow"}


def test_aevaluate_and_close() -> None:
    e = InProcessPolicyEngine(load_policy_bundle(POLICY_DIR))

    async def scenario() -> Verdict:
        return await e.aevaluate(doc())

    assert asyncio.run(scenario()).action == "allow"
    with pytest.raises(PolicyUndefined):
        e.document("soma/gateway/nothing_here", doc())
    e.close()
    with pytest.raises(PolicyUnavailable):
        e.evaluate(doc())
    with pytest.raises(PolicyUnavailable):
        asyncio.run(scenario())


# --- the REST engine against soma's OPA-compatible server -----------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def opa_url() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(load_policy_bundle(POLICY_DIR)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"opa-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "policy server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


EVERY_PATH = [
    doc(),
    doc(budget(limit=(None, 10000, None))),
    doc(budget(limit=(100, None, None))),
    doc(budget(threshold=100)),
    doc(budget(threshold=100), approval=approval()),
    doc(budget(on_exceed="deny", limit=(10, None, None)), approval=approval()),
    bad_doc("budgets.0.on_exceed", "explode"),
]


def test_rest_engine_gives_the_same_verdicts(engine: InProcessPolicyEngine, opa_url: str) -> None:
    async def scenario() -> list[Verdict]:
        async with RestPolicyEngine(opa_url, timeout_s=5) as rest:
            return [await rest.aevaluate(d) for d in EVERY_PATH]

    remote = asyncio.run(scenario())
    assert remote == [engine.evaluate(d) for d in EVERY_PATH]
    assert {v.action for v in remote} == {"allow", "downgrade", "pause", "require_approval", "deny"}


def test_rest_undefined_document_is_a_policy_error(opa_url: str) -> None:
    async def scenario() -> None:
        async with RestPolicyEngine(opa_url, timeout_s=5, path="soma/gateway/nope") as rest:
            await rest.aevaluate(doc())

    with pytest.raises(PolicyUndefined, match="undefined"):
        asyncio.run(scenario())


def test_server_speaks_opas_data_api(opa_url: str) -> None:
    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as s:
            out = []
            for method, path, body in [
                ("GET", "/health", None),
                ("POST", "/v1/data/soma/gateway/nope", {"input": doc()}),
                ("POST", "/v1/data/soma/gateway/verdict", {"input": doc()}),
                ("POST", "/v1/data/soma/gateway/verdict", None),
                ("POST", "/v1/data/soma/gate-way", {}),
            ]:
                data = None if body is None else json.dumps(body)
                async with s.request(method, opa_url + path, data=data) as r:
                    out.append((r.status, await r.json()))
            async with s.post(opa_url + "/v1/data/soma", data=b"{not json") as r:
                out.append((r.status, await r.json()))
            return out

    health, undefined, verdict, no_input, bad_path, bad_body = asyncio.run(scenario())
    assert health == (200, {}) and undefined == (200, {})
    assert verdict == (
        200,
        {"result": Verdict("allow", ("no budget applies",), BIG, None).to_dict()},
    )
    assert no_input[0] == 200 and no_input[1]["result"]["action"] == "deny"
    assert bad_path[0] == 400 and bad_path[1]["code"] == "invalid_parameter"
    assert bad_body[0] == 400 and "not JSON" in bad_body[1]["message"]


def test_a_stopped_server_is_unavailable_quickly() -> None:
    port = free_port()  # nothing listens there any more

    async def scenario() -> float:
        started = time.monotonic()
        async with RestPolicyEngine(f"http://127.0.0.1:{port}", timeout_s=5) as rest:
            with pytest.raises(PolicyUnavailable, match=f"OPA at http://127.0.0.1:{port}"):
                await rest.aevaluate(doc())
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


def test_a_silent_server_is_unavailable_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async def scenario() -> float:
            started = time.monotonic()
            async with RestPolicyEngine(url, timeout_s=0.3) as rest:
                with pytest.raises(PolicyUnavailable, match="no answer within 0.3 s"):
                    await rest.aevaluate(doc())
            return time.monotonic() - started

        assert 0.3 <= asyncio.run(scenario()) < 2.0


# --- soma policy check / serve ---------------------------------------------------------------

RUN_CLI = (
    "import argparse, sys\n"
    "from somaagent.entrypoints.cli_policy import add_policy\n"
    "from somaagent.settings import load_settings\n"
    "p = argparse.ArgumentParser(prog='soma'); s = p.add_subparsers(dest='c'); add_policy(s)\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(load_settings(), a))\n"
)


def soma_policy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, "policy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_policy_check_prints_the_version_or_the_compile_error(tmp_path: Path) -> None:
    ok = soma_policy("check")
    assert ok.returncode == 0, ok.stderr
    assert f"policy version     {load_policy_bundle(POLICY_DIR).version}" in ok.stdout
    assert f"constitution hash  {constitution_hash(POLICY_DIR)}" in ok.stdout
    assert "example verdict    allow" in ok.stdout
    shutil.copytree(POLICY_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "soma" / "gateway.rego").write_text("package soma.gateway\n\nverdict := {\n")
    bad = soma_policy("check", "--dir", str(tmp_path))
    assert bad.returncode == 1
    assert re.search(rf"{tmp_path}/soma/gateway.rego:\d+: rego_parse_error", bad.stderr), bad.stderr


def test_policy_serve_answers_over_http() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_CLI, "policy", "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def scenario() -> Verdict:
            async with RestPolicyEngine(f"http://127.0.0.1:{port}", timeout_s=5) as rest:
                for _ in range(300):
                    try:
                        return await rest.aevaluate(doc(budget(limit=(100, None, None))))
                    except PolicyUnavailable:
                        await asyncio.sleep(0.05)
            raise AssertionError("soma policy serve did not come up")

        assert asyncio.run(scenario()).action == "pause"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert f"on http://127.0.0.1:{port}/v1/data/" in out, err
