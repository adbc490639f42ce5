"""The primary's explicit escalation signals in an answer (pure).

An answer whose first non-empty line is exactly ``defer`` or ``insufficient_confidence``
(``insufficient confidence`` too; any case; punctuation around it ignored) asks for a
bigger model. :func:`upstream_signal` reads a whole answer; :func:`signal_pending` tells a
relay reading a stream whether the text so far could still become one, so it holds back
only those first chunks and passes every other answer through as it arrives.
"""

from __future__ import annotations

import re

__all__ = ["SIGNAL_WORDS", "signal_pending", "upstream_signal"]

_SIGNAL = re.compile(r"^\W*(defer|insufficient[_ ]confidence)\W*$", re.IGNORECASE)
_NON_WORD = re.compile(r"\W*")

SIGNAL_WORDS = ("defer", "insufficient_confidence", "insufficient confidence")


def upstream_signal(content: str | None) -> str | None:
    """``defer`` / ``insufficient_confidence`` when the answer is exactly that signal."""
    if not content:
        return None
    stripped = content.strip()
    match = _SIGNAL.match(stripped.splitlines()[0] if stripped else "")
    if match is None:
        return None
    return "defer" if match.group(1).lower() == "defer" else "insufficient_confidence"


def signal_pending(content: str) -> bool:
    """Whether an answer that begins with ``content`` may still turn out to be a signal
    once more of it arrives: its first line is not complete, and what it has so far is the
    start of a signal (or a whole one with only punctuation after it). Once this is false,
    :func:`upstream_signal` of the whole answer equals that of ``content`` alone."""
    stripped = content.lstrip()
    if not stripped:
        return True  # nothing but white space so far
    lines = stripped.splitlines()
    if len(lines) > 1 or stripped.splitlines(keepends=True)[0] != lines[0]:
        return False  # the first line is complete: it is a signal or it is not
    line = lines[0]
    leading = _NON_WORD.match(line)
    rest = line[leading.end() if leading else 0 :].lower()
    for word in SIGNAL_WORDS:
        if word.startswith(rest):
            return True
        if rest.startswith(word) and _NON_WORD.fullmatch(rest[len(word) :]):
            return True
    return False
