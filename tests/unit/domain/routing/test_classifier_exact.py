"""The fast classifier paths against straightforward reference implementations."""

from __future__ import annotations

import dataclasses
import random
import re
from fractions import Fraction

from somaagent.domain.routing import ClassifierConfig, RequestFeatures, classify, extract_features
from somaagent.domain.routing import _lexicon as lx
from somaagent.domain.routing.classifier import (
    BUSINESS_VALUE_WEIGHTS,
    COMPLEXITY_WEIGHTS,
    DIMENSIONS,
    RISK_WEIGHTS,
)

_TABLES = {
    "complexity": COMPLEXITY_WEIGHTS,
    "risk": RISK_WEIGHTS,
    "business_value": BUSINESS_VALUE_WEIGHTS,
}


def reference_score(features: RequestFeatures, dimension: str) -> Fraction:
    """The score as the documented formula, in ``Fraction``s."""
    total = Fraction(0)
    for row in _TABLES[dimension]:
        value = max(features.value(row.feature), 0)
        total += row.weight * Fraction(min(value, row.saturation), row.saturation)
    return min(total, Fraction(1))


def random_features(rng: random.Random) -> RequestFeatures:
    def terms(top: int) -> tuple[str, ...]:
        return ("t",) * rng.randint(0, top)

    return dataclasses.replace(
        extract_features([]),
        message_count=rng.randint(0, 20),
        estimated_tokens=rng.randint(0, 3000),
        code_fences=rng.randint(0, 3),
        code_lines=rng.randint(0, 40),
        question_count=rng.randint(0, 6),
        max_tokens=rng.choice([None, rng.randint(0, 4096)]),
        complexity_terms=terms(3),
        risk_terms=terms(3),
        value_terms=terms(3),
        deliverable_terms=terms(2),
        destructive_action=rng.random() < 0.5,
        destructive_production=rng.random() < 0.5,
        secret_material=rng.random() < 0.5,
        money_amounts=rng.randint(0, 2),
    )


def test_integer_scores_equal_the_fraction_reference() -> None:
    rng = random.Random(20260101)
    configs = [
        ClassifierConfig(),
        ClassifierConfig(complexity_threshold=0.35, risk_threshold=0.9, business_value_threshold=1),
        ClassifierConfig(complexity_threshold=0.123457, risk_threshold=0.5),
    ]
    for i in range(2500):
        features = random_features(rng)
        config = configs[i % len(configs)]
        result = classify(features, config)
        for dimension in DIMENSIONS:
            expected = reference_score(features, dimension)
            threshold = Fraction(repr(float(getattr(config, f"{dimension}_threshold"))))
            score = result.score(dimension)
            assert score.value == expected
            assert score.fired == (expected >= threshold)
            assert score.threshold == threshold
            document = score.as_dict()
            assert document["score"] == round(float(expected), 6)
            assert document["threshold"] == round(float(threshold), 6)
            assert document["contributions"] == {
                c.feature: round(float(c.amount), 6) for c in score.contributions if c.amount
            }
            assert sum(c.amount for c in score.contributions) >= score.value
        assert result.scores() == {
            d: round(float(reference_score(features, d)), 6) for d in DIMENSIONS
        }


_WORDS = [
    *lx.COMPLEXITY_TERMS.terms,
    *lx.RISK_TERMS.terms,
    *lx.VALUE_TERMS.terms,
    *lx.DELIVERABLE_TERMS.terms,
    "multistep",
    "stepbystep",
    "design an",
    "delete",
    "rm -rf",
    "production",
    "password=hunter2222",
    "sk-abcdefghijklmnopqrstu",
    "$250,000",
    "40k EUR",
    "K",
    "é",
    "foo_bar",
    "the",
    "a",
    "s",
    "?",
]
_SEPARATORS = [
    " ",
    "\n",
    "\t",
    "-",
    " - ",
    "--",
    ". ",
    ",",
    ";",
    "'",
    "(",
    ")",
    "",
    "_",
    "/",
    "\u00a0",
]


def reference_terms(lexicon: lx.Lexicon, text: str) -> tuple[str, ...]:
    """The documented regex: word boundaries, optional plural, [\\s-]* inside a term."""

    def pattern(term: str) -> str:
        return r"[\s-]*".join(re.escape(w) for w in re.split(r"[\s-]+", term))

    def squash(term: str) -> str:
        return re.sub(r"[\s-]+", "", term.lower())

    alternatives = sorted((pattern(t) for t in lexicon.terms), key=len, reverse=True)
    regex = re.compile(r"\b(" + "|".join(alternatives) + r")(?:e?s)?\b", re.IGNORECASE)
    canonical = {squash(t): t for t in lexicon.terms}
    return tuple(sorted({canonical[squash(m.group(1))] for m in regex.finditer(text)}))


def test_token_lookups_equal_the_regular_expressions() -> None:
    rng = random.Random(7)
    lexicons = (lx.COMPLEXITY_TERMS, lx.RISK_TERMS, lx.VALUE_TERMS, lx.DELIVERABLE_TERMS)
    for _ in range(1500):
        pieces = []
        for _ in range(rng.randint(0, 20)):
            word = rng.choice(_WORDS)
            roll = rng.random()
            word = word.upper() if roll < 0.2 else word.title() if roll < 0.35 else word
            if rng.random() < 0.15:
                word += rng.choice(["s", "es", "ed", "x"])
            pieces.append(word + rng.choice(_SEPARATORS))
        text = "".join(pieces)
        scan = lx.TextScan(text)
        for lexicon in lexicons:
            assert lexicon.find_in(scan) == reference_terms(lexicon, text), text
        assert lx.has_destructive_action(scan) == bool(lx.DESTRUCTIVE_ACTION.search(text))
        assert lx.has_secret_material(scan) == bool(lx.SECRET_MATERIAL.search(text))
        assert lx.count_money(scan) == len(lx.MONEY_AMOUNT.findall(text))
        assert lx.count_questions(text) == len(lx.QUESTION.findall(text))


def test_text_where_lowercasing_differs_from_ignorecase_takes_the_regex_path() -> None:
    scan = lx.TextScan("a \u0130 PASSWORD")
    assert not scan.faithful
    assert lx.RISK_TERMS.find_in(scan) == ("password",)


def test_unicode_letters_that_regex_folds_to_ascii_do_not_crash() -> None:
    """ſ (U+017F), ı (U+0131) and İ (U+0130) match ASCII letters case-insensitively."""
    from somaagent.domain.routing import classify_messages

    for text in ("my ſecret password", "dıscuss the productıon database", "İnvoice for the CFO"):
        result = classify_messages([{"role": "user", "content": text}])
        assert 0 <= result.risk.value <= 1
    risky = classify_messages([{"role": "user", "content": "share the ſecret password"}])
    assert risky.risk.value > 0


def test_code_line_check_equals_the_regular_expression() -> None:
    rng = random.Random(11)
    pieces = [
        *("def ", "class ", "from x import ", "from  import ", "return", "returns", "SELECT "),
        *("#include", "DELETE FROM ", "let ", "var", "import", "function "),
        *(";", "{", "}", "(", ")", ":", "=>", "=", ">", " ", "\t", "\u00a0", "\x1f", "\u3000"),
        *("word", "Prose, with a clause", "x", "9", "é", "-", "_"),
    ]
    lines = ["", " ", "):", ") :", "f(x)::", "a;  ", " \u00a0}", "  def f():"]
    for _ in range(60_000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        lines += line.splitlines() or [line]
    for line in lines:
        assert lx.is_code_line(line) == bool(lx.CODE_LINE.search(line)), repr(line)
