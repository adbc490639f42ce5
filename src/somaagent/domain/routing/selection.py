"""The router's decision: which model serves a request, why, and what to try next.

The ladder starts at the primary tier, or at the SLM tier when ``SLM_ENABLED`` is on and an
SLM model is eligible. It climbs to the escalation tier when

* ``escalation_enabled`` and a classifier score reaches its threshold, or the primary/SLM
  answered with an explicit ``defer`` / ``insufficient_confidence`` signal; or
* ``escalation_fallback_enabled`` and the length safety net fires. This switch is
  independent of ``escalation_enabled``: it escalates on length only, so an operator can
  keep the classifier off and still send unusually long statements up.

When several rules fire, the reason recorded is the first of: the upstream signal,
high_risk, high_complexity, high_business_value, length_fallback (all of them are in the
decision tree). If the target tier has no eligible model, the request stays on the ladder
below and ``escalation_blocked`` says so.

Eligible = live (enabled, with an endpoint), admitted for the persona/role
(``developer_only`` models only for developer personas) and its circuit not open. Among the
eligible models of a tier, ``_ranking.rank`` orders by SLA, success rate, cost and id.

A model the client names is honoured when it is live, allowed, and its tier is switched
on; otherwise ``RequestRejected``. A requested model whose circuit is open is not an error:
the router routes as if none had been named, and the tree says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal

from somaagent.domain.routing._entry import ModelEntry, Tier, is_developer
from somaagent.domain.routing._errors import NoRouteError, RequestRejected
from somaagent.domain.routing._ranking import ModelStats, RankedCandidate, RouterConfig, rank
from somaagent.domain.routing.catalog import Catalog
from somaagent.domain.routing.classifier import DIMENSIONS, Classification, Dimension

__all__ = [
    "DECISION_TREE_VERSION",
    "Decision",
    "DecisionReason",
    "Exclusion",
    "RankingMemo",
    "RouterFlags",
    "UpstreamSignal",
    "decide",
]

DECISION_TREE_VERSION = 1
UpstreamSignal = Literal["defer", "insufficient_confidence"]
EscalationReason = Literal[
    "high_complexity",
    "high_risk",
    "high_business_value",
    "slm_defer",
    "slm_insufficient_confidence",
    "length_fallback",
]
DecisionReason = EscalationReason | Literal["requested", "default"]
Exclusion = Literal[
    "disabled",
    "no_endpoint",
    "tier_disabled",
    "developer_only",
    "persona_not_allowed",
    "circuit_open",
    "tier_not_considered",
]
_SCORE_RULES: tuple[tuple[EscalationReason, Dimension], ...] = (
    ("high_risk", "risk"),
    ("high_complexity", "complexity"),
    ("high_business_value", "business_value"),
)
_SIGNAL_RULES: Mapping[str, EscalationReason] = {
    "defer": "slm_defer",
    "insufficient_confidence": "slm_insufficient_confidence",
}


@dataclass(frozen=True, slots=True)
class RouterFlags:
    """The runtime switches: ``ESCALATION_ENABLED``, ``ESCALATION_FALLBACK_ENABLED``,
    ``SLM_ENABLED`` (all off by default, as in every profile today)."""

    escalation_enabled: bool = False
    escalation_fallback_enabled: bool = False
    slm_enabled: bool = False

    def as_dict(self) -> dict[str, bool]:
        """JSON-safe view."""
        return {
            "escalation_enabled": self.escalation_enabled,
            "escalation_fallback_enabled": self.escalation_fallback_enabled,
            "slm_enabled": self.slm_enabled,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The model chosen, the tier, why, and the ordered fallbacks.

    ``tree`` is the JSON-serialisable record that goes into the event; read it through
    ``decision_tree()``, which returns a shallow copy.
    """

    model: ModelEntry
    tier: Tier
    escalated: bool
    reason: DecisionReason
    fallbacks: tuple[ModelEntry, ...]
    escalation_blocked: bool
    tree: Mapping[str, Any] = field(repr=False, compare=False)

    def decision_tree(self) -> dict[str, Any]:
        """Flags, scores, thresholds, fired rules, candidates, exclusions, winner, fallbacks.

        A shallow copy (``dict(self.tree)``): callers may add or replace top-level keys
        (``attempts``, ``upstream_signal``, ``escalation``) without touching this decision,
        but must not mutate the nested values, which are shared with ``tree``.
        """
        return dict(self.tree)


def decide(
    *,
    catalog: Catalog,
    persona: str,
    role: str,
    flags: RouterFlags,
    classification: Classification,
    stats: Mapping[str, ModelStats] | None = None,
    requested_model: str | None = None,
    upstream_signal: UpstreamSignal | None = None,
    open_circuits: Set[str] = frozenset(),
    config: RouterConfig | None = None,
    memo: RankingMemo | None = None,
) -> Decision:
    """Choose the model for one request; raise ``RequestRejected`` or ``NoRouteError``.

    ``memo`` (owned by the caller) keeps the rankings between requests while the catalog,
    flags, stats snapshot, open circuits and config stay the same objects/values."""
    config = config or RouterConfig()
    ctx = _Context(catalog, persona, role, flags, stats or {}, open_circuits, config)
    if memo is not None:
        ctx.use(memo)
    rules = _rules(flags, classification, upstream_signal)
    triggers = [r.rule for r in rules if r.fired and r.active]
    lower: list[Tier] = ["slm", "primary"] if ctx.ranked("slm") else ["primary"]
    ladder: list[Tier] = ["escalation", *lower] if triggers else lower
    requested = _requested(ctx, requested_model)

    if requested is not None and requested["honoured"]:
        chosen = ctx.entry_ranked(requested_model or "")
        tier = chosen.entry.tier
        reason: DecisionReason = "requested"
        below = lower[lower.index(tier) + 1 :] if tier in lower else lower
        escalation_blocked = False
    else:
        usable = [t for t in ladder if ctx.ranked(t)]
        if not usable:
            raise NoRouteError(
                f"no eligible model for persona {persona!r} on tiers {', '.join(ladder)}"
            )
        tier = usable[0]
        chosen = ctx.ranked(tier)[0]
        escalation_blocked = bool(triggers) and tier != "escalation"
        reason = triggers[0] if tier == "escalation" else "default"
        below = ladder[ladder.index(tier) + 1 :]

    fallbacks = [c for c in ctx.ranked(tier) if c.entry.model_id != chosen.entry.model_id]
    for lower_tier in below:
        fallbacks.extend(ctx.ranked(lower_tier))
    if config.fallback_upward and flags.escalation_enabled and tier != "escalation":
        fallbacks.extend(ctx.ranked("escalation"))

    considered = [tier, *below]
    if config.fallback_upward and flags.escalation_enabled and "escalation" not in considered:
        considered.append("escalation")
    tree = _tree(
        ctx,
        classification=classification,
        upstream_signal=upstream_signal,
        rules=rules,
        ladder=ladder,
        considered=considered,
        requested=requested,
        chosen=chosen,
        reason=reason,
        escalation_blocked=escalation_blocked,
        fallbacks=fallbacks,
    )
    return Decision(
        model=chosen.entry,
        tier=tier,
        escalated=tier == "escalation",
        reason=reason,
        fallbacks=tuple(c.entry for c in fallbacks),
        escalation_blocked=escalation_blocked,
        tree=tree,
    )


class _Context:
    """Per-request view of the catalog: eligibility and ranking, computed once per tier."""

    def __init__(
        self,
        catalog: Catalog,
        persona: str,
        role: str,
        flags: RouterFlags,
        stats: Mapping[str, ModelStats],
        open_circuits: Set[str],
        config: RouterConfig,
    ) -> None:
        self.catalog = catalog
        self.persona = persona
        self.role = role
        self.flags = flags
        self.stats = stats
        self.open_circuits = open_circuits
        self.config = config
        self._ranked: dict[Tier, tuple[RankedCandidate, ...]] = {}
        self._listed: dict[tuple[Tier, ...], tuple[list[Any], list[Any]]] = {}

    def use(self, memo: RankingMemo) -> None:
        """Share ``memo``'s rankings and tree lists for this persona and role (cleared when
        any input of a ranking changed)."""
        self._ranked, self._listed = memo.rankings(self)

    def listed(self, considered: Sequence[Tier]) -> tuple[list[Any], list[Any]]:
        """The decision tree's ``candidates`` and ``excluded`` for these tiers (memoised;
        shared between trees, which never mutate nested values)."""
        key = tuple(considered)
        found = self._listed.get(key)
        if found is None:
            candidates = [c.as_dict(i + 1) for t in key for i, c in enumerate(self.ranked(t))]
            excluded: list[dict[str, str]] = []
            for entry in self.catalog:
                why = self.exclusion(entry)
                if why is None and entry.tier not in key:
                    why = "tier_not_considered"
                if why is not None:
                    excluded.append({"model_id": entry.model_id, "tier": entry.tier, "why": why})
            found = self._listed[key] = (candidates, excluded)
        return found

    def exclusion(self, entry: ModelEntry) -> Exclusion | None:
        """Why ``entry`` cannot take this request, or None when it is eligible."""
        if not entry.enabled:
            return "disabled"
        if entry.base_url is None:
            return "no_endpoint"
        if not self.tier_on(entry.tier):
            return "tier_disabled"
        if entry.developer_only and not is_developer(
            self.persona,
            self.role,
            developer_personas=self.config.developer_personas,
            developer_roles=self.config.developer_roles,
        ):
            return "developer_only"
        if not entry.persona_listed(self.persona):
            return "persona_not_allowed"
        if entry.model_id in self.open_circuits:
            return "circuit_open"
        return None

    def tier_on(self, tier: Tier) -> bool:
        if tier == "slm":
            return self.flags.slm_enabled
        if tier == "escalation":
            # The length safety net may escalate on its own (see the module docstring).
            return self.flags.escalation_enabled or self.flags.escalation_fallback_enabled
        return True

    def ranked(self, tier: Tier) -> tuple[RankedCandidate, ...]:
        """Eligible models of ``tier``, best first (memoised)."""
        if tier not in self._ranked:
            eligible = tuple(e for e in self.catalog.list(tier=tier) if self.exclusion(e) is None)
            self._ranked[tier] = rank(
                eligible, persona=self.persona, stats=self.stats, config=self.config
            )
        return self._ranked[tier]

    def entry_ranked(self, model_id: str) -> RankedCandidate:
        entry = self.catalog.get(model_id)
        assert entry is not None
        return next(c for c in self.ranked(entry.tier) if c.entry.model_id == model_id)


class RankingMemo:
    """Rankings per (persona, role), valid for one catalog, flags, stats snapshot, set of
    open circuits and config; bounded to ``max_callers`` pairs."""

    def __init__(self, max_callers: int = 1024) -> None:
        self._inputs: tuple[object, ...] = ()
        self._by_caller: dict[tuple[str, str], _Memo] = {}
        self._max = max_callers

    def rankings(self, ctx: _Context) -> _Memo:
        inputs = (ctx.catalog, ctx.flags, ctx.stats, frozenset(ctx.open_circuits), ctx.config)
        old = self._inputs
        if len(old) != len(inputs) or not (
            old[0] is inputs[0]
            and old[1] == inputs[1]
            and (old[2] is inputs[2] or not (old[2] or inputs[2]))  # same snapshot
            and old[3] == inputs[3]
            and old[4] == inputs[4]
        ):
            self._inputs = inputs
            self._by_caller = {}
        key = (ctx.persona, ctx.role)
        memo = self._by_caller.get(key)
        if memo is None:
            if len(self._by_caller) >= self._max:
                self._by_caller.clear()
            memo = self._by_caller[key] = ({}, {})
        return memo


# One caller's memo: rankings per tier, tree lists per considered tiers.
_Memo = tuple[
    dict[Tier, tuple[RankedCandidate, ...]],
    dict[tuple[Tier, ...], tuple[list[Any], list[Any]]],
]


@dataclass(frozen=True, slots=True)
class _Rule:
    """One escalation rule: whether its condition holds, and whether a flag lets it act."""

    rule: EscalationReason
    fired: bool
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "fired": self.fired, "active": self.active}


def _rules(
    flags: RouterFlags, classification: Classification, signal: UpstreamSignal | None
) -> list[_Rule]:
    """Every escalation rule, in priority order."""
    rules = [
        _Rule(rule, signal == name, flags.escalation_enabled)
        for name, rule in _SIGNAL_RULES.items()
    ]
    rules.extend(
        _Rule(rule, classification.score(dimension).fired, flags.escalation_enabled)
        for rule, dimension in _SCORE_RULES
    )
    rules.append(
        _Rule("length_fallback", classification.length_fallback, flags.escalation_fallback_enabled)
    )
    return rules


def _requested(ctx: _Context, model_id: str | None) -> dict[str, Any] | None:
    """Check a client-named model: honoured, routed around (circuit open), or rejected."""
    if model_id is None:
        return None
    entry = ctx.catalog.get(model_id)
    if entry is None:
        raise RequestRejected("unknown_model", model_id, "not in the model catalog")
    why = ctx.exclusion(entry)
    if why in ("disabled", "no_endpoint"):
        raise RequestRejected("model_not_live", model_id, f"not available ({why})")
    if why == "tier_disabled" or (entry.tier == "escalation" and not ctx.flags.escalation_enabled):
        # ESCALATION_ENABLED gates the tier for named requests too; the length safety net
        # alone never lets a client pick an escalation model.
        raise RequestRejected(
            "model_not_allowed", model_id, f"the {entry.tier} tier is switched off"
        )
    if why in ("developer_only", "persona_not_allowed"):
        raise RequestRejected(
            "model_not_allowed", model_id, f"not allowed for persona {ctx.persona!r} ({why})"
        )
    return {"model_id": model_id, "honoured": why is None, "why": why or "live and allowed"}


def _tree(
    ctx: _Context,
    *,
    classification: Classification,
    upstream_signal: UpstreamSignal | None,
    rules: list[_Rule],
    ladder: list[Tier],
    considered: list[Tier],
    requested: dict[str, Any] | None,
    chosen: RankedCandidate,
    reason: DecisionReason,
    escalation_blocked: bool,
    fallbacks: list[RankedCandidate],
) -> dict[str, Any]:
    limit = ctx.config.max_listed
    candidates, excluded = ctx.listed(considered)
    if reason == "requested":
        why_won = "requested by the client; live and allowed"
    else:
        peers = len(ctx.ranked(chosen.entry.tier))
        why_won = f"rank 1 of {peers} on tier {chosen.entry.tier}: {chosen.summary()}"
    # The per-dimension scores and thresholds are the classification's own, rounded once.
    classified = classification.as_dict()
    tree: dict[str, Any] = {
        "version": DECISION_TREE_VERSION,
        "persona": ctx.persona,
        "role": ctx.role,
        "flags": ctx.flags.as_dict(),
        "scores": {d: classified[d]["score"] for d in DIMENSIONS},
        "thresholds": {d: classified[d]["threshold"] for d in DIMENSIONS},
        "classification": classified,
        "upstream_signal": upstream_signal,
        "rules": [r.as_dict() for r in rules],
        "fired_rules": [r.rule for r in rules if r.fired and r.active],
        "ladder": ladder,
        "tier": chosen.entry.tier,
        "escalated": chosen.entry.tier == "escalation",
        "escalation_blocked": escalation_blocked,
        "reason": reason,
        "requested": requested,
        "candidates": candidates[:limit],
        "excluded": excluded[:limit],
        "winner": {"model_id": chosen.entry.model_id, "tier": chosen.entry.tier, "why": why_won},
        "fallbacks": [c.entry.model_id for c in fallbacks][:limit],
    }
    truncated = {
        name: len(items) - limit
        for name, items in (
            ("candidates", candidates),
            ("excluded", excluded),
            ("fallbacks", fallbacks),
        )
        if len(items) > limit
    }
    if truncated:
        tree["truncated"] = truncated
    return tree
