"""The primary's escalation signals, and when a relay may stop holding a stream back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somaagent.domain.routing.signals import signal_pending, upstream_signal


@pytest.mark.parametrize(
    ("text", "signal"),
    [
        ("defer", "defer"),
        ("  **Defer.**\nI cannot answer this.", "defer"),
        ("\n\nINSUFFICIENT_CONFIDENCE", "insufficient_confidence"),
        ("insufficient confidence!", "insufficient_confidence"),
        ("deferred payment", None),
        ("defer. Because", None),
        ("I defer", None),
        ("", None),
    ],
)
def test_a_signal_is_a_first_line_of_that_word_alone(text: str, signal: str | None) -> None:
    assert upstream_signal(text) == signal


@pytest.mark.parametrize(
    ("text", "pending"),
    [
        ("", True),
        ("  \n ", True),
        ("*", True),
        ("d", True),
        ("DEF", True),
        ("defer", True),  # "deferred" may follow
        ("defer.", True),
        ("insufficient ", True),
        ("insufficient_conf", True),
        ("The", False),
        ("deferr", False),
        ("defer. B", False),
        ("defer\n", False),  # the first line is complete: a signal, decided now
        ("Sure\n", False),
    ],
)
def test_only_the_start_of_a_possible_signal_is_pending(text: str, pending: bool) -> None:
    assert signal_pending(text) is pending


_PIECES = st.sampled_from(
    ["d", "ef", "er", "D", "EFER", "insufficient", "_", " ", "confidence", ".", "!", "*", "\n"]
    + ["red", " payment", "The", "x", "\r\n", "\u2028", "é", "?"]
)


@settings(max_examples=600, deadline=None)
@given(st.lists(_PIECES, max_size=8), st.lists(_PIECES, max_size=8))
def test_once_nothing_is_pending_more_text_never_changes_the_verdict(
    head: list[str], tail: list[str]
) -> None:
    start = "".join(head)
    if not signal_pending(start):
        assert upstream_signal(start + "".join(tail)) == upstream_signal(start)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_the_same_holds_for_any_text(start: str, rest: str) -> None:
    if not signal_pending(start):
        assert upstream_signal(start + rest) == upstream_signal(start)
