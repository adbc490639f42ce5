"""The pre-classifier: explainable scores for complexity, risk and business value.

No model is called. ``extract_features`` reads the OpenAI-style ``messages`` (only the text
of ``system``, ``developer`` and ``user`` messages; assistant and tool turns are the
models' own output) and ``classify`` turns the features into three scores in [0, 1].

Each feature is normalised to ``min(value, saturation) / saturation`` and multiplied by its
weight; a score is the sum of its contributions, clamped to 1. A score *fires* when it is
``>=`` its threshold. The arithmetic is exact (weights and thresholds are read as the
decimals they are written as), so a score that lands exactly on a threshold fires, with no
floating-point doubt. Scores are computed in integers over the common denominator
``SCORE_DENOMINATOR`` (one unit of a feature adds ``weight * SCORE_DENOMINATOR /
saturation``, an integer); ``Score.value`` and ``Contribution.amount`` give the same
numbers as ``fractions.Fraction`` on demand, and thresholds are compared by
cross-multiplication.

==========================  ===================================================  ====  ======
dimension / feature         what is measured                                     sat.  weight
==========================  ===================================================  ====  ======
complexity
  estimated_tokens          ceil(chars of system/developer/user text / 4)        1500  0.30
  complexity_terms          distinct terms: multi-step, step by step, analyze,   2     0.35
                            prove, derive, refactor, architecture, algorithm...
  code_fences               fenced code blocks (``` or ~~~)                      2     0.15
  code_lines                lines inside fences + code-looking lines outside     30    0.15
  question_count            runs of "?"                                          4     0.10
  message_count             messages in the conversation (all roles)             12    0.05
  max_tokens                completion tokens the client asked for               2048  0.10
risk
  risk_terms                distinct terms: legal, medical, security,            2     0.70
                            credential, password, payment, compliance, gdpr,
                            production...
  destructive_action        delete, drop, truncate, wipe, purge, rm -rf...       1     0.20
  destructive_production    a destructive action and production / database /     1     0.30
                            backups / customer data in the same sentence
  secret_material           a private key, cloud/API key or password=... pasted  1     0.30
business_value
  value_terms               distinct terms: contract, customer, revenue,         2     0.60
                            invoice, executive, cfo, renewal, enterprise...
  money_amounts             sums of money ($250,000, 40k EUR)                    1     0.25
  deliverable_terms         proposal, report, presentation, memo, email to...    1     0.20
==========================  ===================================================  ====  ======

Thresholds (``ClassifierConfig``): complexity 0.7, risk 0.7, business_value 0.7. The length
safety net (used by the router only with ``ESCALATION_FALLBACK_ENABLED``) fires when the
longest system/developer/user message has ``>= length_fallback_chars`` (default 6000)
characters. The matched terms stay in this object; the router's decision tree records
only counts, never words from the prompt.

Feature extraction is linear in the prompt: the text is lower-cased and tokenised once and
the word lists are looked up per token (see ``_lexicon``); the whole text is scanned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal

from somaagent.domain.routing import _lexicon as lx

__all__ = [
    "BUSINESS_VALUE_WEIGHTS",
    "COMPLEXITY_WEIGHTS",
    "DIMENSIONS",
    "RISK_WEIGHTS",
    "SCORE_DENOMINATOR",
    "Classification",
    "ClassifierConfig",
    "Contribution",
    "Dimension",
    "FeatureWeight",
    "RequestFeatures",
    "Score",
    "classify",
    "classify_messages",
    "extract_features",
]

Dimension = Literal["complexity", "risk", "business_value"]
DIMENSIONS: tuple[Dimension, ...] = ("complexity", "risk", "business_value")
CHARS_PER_TOKEN = 4
_READ_ROLES = frozenset({"system", "developer", "user"})


@dataclass(frozen=True, slots=True)
class FeatureWeight:
    """One row of the weight table: ``weight * min(value, saturation) / saturation``."""

    feature: str
    saturation: int
    weight: Fraction


def _w(feature: str, saturation: int, weight: str) -> FeatureWeight:
    return FeatureWeight(feature, saturation, Fraction(weight))


COMPLEXITY_WEIGHTS = (
    _w("estimated_tokens", 1500, "0.30"),
    _w("complexity_terms", 2, "0.35"),
    _w("code_fences", 2, "0.15"),
    _w("code_lines", 30, "0.15"),
    _w("question_count", 4, "0.10"),
    _w("message_count", 12, "0.05"),
    _w("max_tokens", 2048, "0.10"),
)
RISK_WEIGHTS = (
    _w("risk_terms", 2, "0.70"),
    _w("destructive_action", 1, "0.20"),
    _w("destructive_production", 1, "0.30"),
    _w("secret_material", 1, "0.30"),
)
BUSINESS_VALUE_WEIGHTS = (
    _w("value_terms", 2, "0.60"),
    _w("money_amounts", 1, "0.25"),
    _w("deliverable_terms", 1, "0.20"),
)
_WEIGHTS: Mapping[Dimension, tuple[FeatureWeight, ...]] = {
    "complexity": COMPLEXITY_WEIGHTS,
    "risk": RISK_WEIGHTS,
    "business_value": BUSINESS_VALUE_WEIGHTS,
}
# Every ``weight / saturation`` is a whole number of 1/SCORE_DENOMINATOR.
SCORE_DENOMINATOR = math.lcm(
    *(row.weight.denominator * row.saturation for rows in _WEIGHTS.values() for row in rows)
)
# Per dimension: (feature, saturation, units that one unit of the feature adds).
_UNITS: Mapping[Dimension, tuple[tuple[str, int, int], ...]] = {
    dimension: tuple(
        (
            row.feature,
            row.saturation,
            row.weight.numerator * (SCORE_DENOMINATOR // (row.weight.denominator * row.saturation)),
        )
        for row in rows
    )
    for dimension, rows in _WEIGHTS.items()
}


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """Thresholds (each in (0, 1]) and the length safety net's size in characters."""

    complexity_threshold: float = 0.7
    risk_threshold: float = 0.7
    business_value_threshold: float = 0.7
    length_fallback_chars: int = 6000

    def __post_init__(self) -> None:
        for dimension in DIMENSIONS:
            value = getattr(self, f"{dimension}_threshold")
            if not 0 < value <= 1:
                raise ValueError(f"{dimension}_threshold must be in (0, 1], got {value}")
        if self.length_fallback_chars < 1:
            raise ValueError(
                f"length_fallback_chars must be >= 1, got {self.length_fallback_chars}"
            )

    def threshold(self, dimension: Dimension) -> Fraction:
        """The threshold as the exact decimal it is written as (0.7 is 7/10)."""
        return _exact(float(getattr(self, f"{dimension}_threshold")))


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What the classifier measured in one request; the ``*_terms`` hold matched words."""

    message_count: int
    content_chars: int
    longest_message_chars: int
    estimated_tokens: int
    code_fences: int
    code_lines: int
    question_count: int
    max_tokens: int | None
    complexity_terms: tuple[str, ...]
    risk_terms: tuple[str, ...]
    value_terms: tuple[str, ...]
    deliverable_terms: tuple[str, ...]
    destructive_action: bool
    destructive_production: bool
    secret_material: bool
    money_amounts: int

    def value(self, feature: str) -> int:
        """The numeric value a weight applies to (term lists count their terms)."""
        raw = getattr(self, feature)
        if isinstance(raw, tuple):
            return len(raw)
        if raw is None:
            return 0
        return int(raw)

    def as_dict(self) -> dict[str, int | bool | None]:
        """Counts and flags only: JSON-safe, and no words from the prompt."""
        out: dict[str, int | bool | None] = {}
        for name in _FEATURE_NAMES:
            raw = getattr(self, name)
            out[name] = len(raw) if isinstance(raw, tuple) else raw
        return out


_FEATURE_NAMES = tuple(f.name for f in fields(RequestFeatures))


@dataclass(frozen=True, slots=True)
class Contribution:
    """How much one feature added to a score."""

    feature: str
    value: int
    saturation: int
    weight: Fraction
    amount: Fraction


@dataclass(frozen=True, slots=True)
class Score:
    """One dimension's score, its threshold and the feature values it was computed from.

    ``units`` is the score in units of ``1 / SCORE_DENOMINATOR`` (clamped to the
    denominator, i.e. 1); ``value`` and ``contributions`` are derived from it exactly.
    """

    dimension: Dimension
    units: int
    threshold: Fraction
    values: tuple[int, ...]

    @property
    def value(self) -> Fraction:
        """The score, exactly."""
        return Fraction(self.units, SCORE_DENOMINATOR)

    @property
    def contributions(self) -> tuple[Contribution, ...]:
        """What each feature of the weight table added, in the table's order."""
        return tuple(
            Contribution(
                row.feature,
                value,
                row.saturation,
                row.weight,
                Fraction(units * min(value, row.saturation), SCORE_DENOMINATOR),
            )
            for row, (_, _, units), value in zip(
                _WEIGHTS[self.dimension], _UNITS[self.dimension], self.values, strict=True
            )
        )

    @property
    def fired(self) -> bool:
        """Whether the score reaches its threshold (``>=``, exactly)."""
        threshold = self.threshold
        return self.units * threshold.denominator >= threshold.numerator * SCORE_DENOMINATOR

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view; non-zero contributions only, rounded to 6 places."""
        return {
            "score": _round_units(self.units),
            "threshold": _round(self.threshold),
            "fired": self.fired,
            "contributions": {
                feature: _round_units(units * min(value, saturation))
                for (feature, saturation, units), value in zip(
                    _UNITS[self.dimension], self.values, strict=True
                )
                if value
            },
        }


@dataclass(frozen=True, slots=True)
class Classification:
    """The features, the three scores and the length safety net of one request."""

    features: RequestFeatures
    complexity: Score
    risk: Score
    business_value: Score
    length_fallback_chars: int

    def score(self, dimension: Dimension) -> Score:
        """The ``Score`` of one dimension."""
        result: Score = getattr(self, dimension)
        return result

    @property
    def fired(self) -> tuple[Dimension, ...]:
        """Dimensions whose score reached the threshold, in ``DIMENSIONS`` order."""
        return tuple(d for d in DIMENSIONS if self.score(d).fired)

    @property
    def length_fallback(self) -> bool:
        """Whether the longest message is at least ``length_fallback_chars`` long."""
        return self.features.longest_message_chars >= self.length_fallback_chars

    def scores(self) -> dict[str, float]:
        """Scores as floats rounded to 6 places."""
        return {d: _round_units(self.score(d).units) for d in DIMENSIONS}

    def thresholds(self) -> dict[str, float]:
        """Thresholds as floats."""
        return {d: _round(self.score(d).threshold) for d in DIMENSIONS}

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary: features (counts), scores with contributions, safety net."""
        return {
            "features": self.features.as_dict(),
            **{d: self.score(d).as_dict() for d in DIMENSIONS},
            "length_fallback": {
                "longest_message_chars": self.features.longest_message_chars,
                "threshold_chars": self.length_fallback_chars,
                "fired": self.length_fallback,
            },
        }


def extract_features(
    messages: Sequence[Mapping[str, Any]], *, max_tokens: int | None = None
) -> RequestFeatures:
    """Measure ``messages`` (OpenAI chat format; content a string or a list of parts)."""
    texts = [
        _text(m.get("content")) for m in messages if str(m.get("role", "")).lower() in _READ_ROLES
    ]
    joined = "\n".join(texts)
    scan = lx.TextScan(joined)
    fences, code_lines = _code(texts)
    content_chars = sum(len(t) for t in texts)
    destructive_action = lx.has_destructive_action(scan)
    return RequestFeatures(
        message_count=len(messages),
        content_chars=content_chars,
        longest_message_chars=max((len(t) for t in texts), default=0),
        estimated_tokens=-(-content_chars // CHARS_PER_TOKEN),
        code_fences=fences,
        code_lines=code_lines,
        question_count=lx.count_questions(joined),
        max_tokens=max_tokens,
        complexity_terms=lx.COMPLEXITY_TERMS.find_in(scan),
        risk_terms=lx.RISK_TERMS.find_in(scan),
        value_terms=lx.VALUE_TERMS.find_in(scan),
        deliverable_terms=lx.DELIVERABLE_TERMS.find_in(scan),
        destructive_action=destructive_action,
        # A destructive match inside a sentence is one in the whole text, so without one
        # in the whole text there is none to pair with a production target.
        destructive_production=destructive_action
        and any(
            lx.DESTRUCTIVE_ACTION.search(s) and lx.PRODUCTION_TARGET.search(s)
            for s in lx.SENTENCE_BREAK.split(joined)
        ),
        secret_material=lx.has_secret_material(scan),
        money_amounts=lx.count_money(scan),
    )


def classify(features: RequestFeatures, config: ClassifierConfig | None = None) -> Classification:
    """Score ``features`` against the weight tables and ``config``'s thresholds."""
    config = config or ClassifierConfig()
    scores = {d: _score(d, features, config.threshold(d)) for d in DIMENSIONS}
    return Classification(
        features=features,
        complexity=scores["complexity"],
        risk=scores["risk"],
        business_value=scores["business_value"],
        length_fallback_chars=config.length_fallback_chars,
    )


def classify_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int | None = None,
    config: ClassifierConfig | None = None,
) -> Classification:
    """``classify(extract_features(messages, max_tokens=...), config)``."""
    return classify(extract_features(messages, max_tokens=max_tokens), config)


def _score(dimension: Dimension, features: RequestFeatures, threshold: Fraction) -> Score:
    values = []
    total = 0
    for feature, saturation, units in _UNITS[dimension]:
        value = max(features.value(feature), 0)
        values.append(value)
        total += units * min(value, saturation)
    return Score(dimension, min(total, SCORE_DENOMINATOR), threshold, tuple(values))


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def _code(texts: Sequence[str]) -> tuple[int, int]:
    """Fenced blocks and code lines across ``texts`` (an unclosed fence runs to the end)."""
    fence_lines = 0
    code_lines = 0
    for text in texts:
        inside = False
        for line in text.splitlines():
            if lx.FENCE_LINE.match(line):
                fence_lines += 1
                inside = not inside
            elif inside or lx.is_code_line(line):
                code_lines += 1
        if inside:
            fence_lines += 1  # close it, so each block counts two fence lines
    return fence_lines // 2, code_lines


@lru_cache(maxsize=64)
def _exact(value: float) -> Fraction:
    return Fraction(repr(value))


def _round(value: Fraction) -> float:
    # numerator / denominator is exactly float(value), without the Fraction machinery.
    return round(value.numerator / value.denominator, 6)


def _round_units(units: int) -> float:
    # int / int is correctly rounded, as float(Fraction(units, SCORE_DENOMINATOR)) is.
    return round(units / SCORE_DENOMINATOR, 6)
