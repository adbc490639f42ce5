"""The scanner's tokens and glue equal the regular-expression definition, on ASCII text
(the translate + split path) and on any other text (the regex path)."""

from __future__ import annotations

import random

import pytest

from somaagent.domain.routing._lexicon import _WORD_RUNS, TextScan


def reference(lowered: str) -> tuple[list[str], list[bool]]:
    """Tokens: the \\w+ runs; glue: the \\W+ run between two tokens is [\\s-] only."""
    parts = _WORD_RUNS.split(lowered)
    words = [w for w in parts[0::2] if w]
    seps = parts[1::2]
    if parts[0] == "":
        seps = seps[1:]
    glue = [all(ch.isspace() or ch == "-" for ch in sep) for sep in seps[: max(0, len(words) - 1)]]
    return words, glue


@pytest.mark.parametrize("extra", [[], ["é", "ß", "\u00a0", "\u2003", "日本", "Ⅻ", "٣"]])
def test_tokens_and_glue_match_the_definition(extra: list[str]) -> None:
    rng = random.Random(7 + len(extra))
    alphabet = [chr(i) for i in range(128)] + ["ab", "Cd", "_x", "--", " - ", "9z", *extra]
    checked = 0
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        scan = TextScan(text)
        if not scan.faithful:
            continue
        assert (scan.tokens, scan.glue) == reference(scan.lowered), repr(text)
        checked += 1
    assert checked > 15_000
