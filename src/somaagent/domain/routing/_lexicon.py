"""Word lists and patterns the pre-classifier looks for (English; case-insensitive).

Terms match on word boundaries, with an optional plural ``s``/``es``; spaces and hyphens
inside a term are interchangeable or optional (``multi-step`` = ``multi step`` =
``multistep``). Each distinct term counts once per request, however often it appears.

Performance: the regular expressions below define the semantics, but scanning a long prompt
with a large case-insensitive alternation costs ~1.7 ms per 1,000 characters. ``TextScan``
lower-cases and tokenises the text once (linear); ``Lexicon.find_in`` then looks the tokens
up in per-lexicon dicts and reproduces the regex exactly (leftmost match, alternatives tried
longest pattern first, non-overlapping, plural suffix only on the last word, separators of
whitespace/hyphens only). The other patterns run only when a literal every match must
contain occurs in the lower-cased text. Text with one of the three characters for which
``str.lower`` and ``re.IGNORECASE`` disagree on ASCII letters (U+0130, U+0131, U+017F)
takes the plain regex path. The scanned text is not capped: term counts do not saturate
before the end of the prompt, so a cap could change a score.
"""

from __future__ import annotations

import re
from itertools import compress, count

__all__ = [
    "CODE_LINE",
    "COMPLEXITY_TERMS",
    "DELIVERABLE_TERMS",
    "DESTRUCTIVE_ACTION",
    "FENCE_LINE",
    "MONEY_AMOUNT",
    "PRODUCTION_TARGET",
    "QUESTION",
    "RISK_TERMS",
    "SECRET_MATERIAL",
    "SENTENCE_BREAK",
    "VALUE_TERMS",
    "Lexicon",
    "TextScan",
    "count_money",
    "count_questions",
    "has_destructive_action",
    "has_secret_material",
    "is_code_line",
]


# Characters that re.IGNORECASE matches to an ASCII letter while str.lower() does not map
# them to that letter (U+212A KELVIN SIGN lower-cases to "k" and is fine).
_CASE_EXOTIC = frozenset("\u0130\u0131\u017f")
_WORD_RUNS = re.compile(r"(\W+)")
# ASCII: "-" -> " ", any other character that is neither a word character nor whitespace
# (str.isspace, as str.split uses) -> NUL (one character each: translate's fast path).
_ASCII_SEPARATORS = {ord("-"): " "} | {
    i: "\0"
    for i in range(128)
    if not (chr(i).isalnum() or chr(i) == "_" or chr(i).isspace() or chr(i) == "-")
}


class TextScan:
    """One pass over a text: its lower-cased form and its word tokens (``\\w+`` runs).

    ``items`` holds the tokens in order with a ``"\\0"`` item between two tokens that
    something other than whitespace and hyphens separates (a term may span the former
    only): a term's next word is simply the next item, and ``"\\0"`` is no word. On ASCII
    text all of it is built at C speed (translate, split), with no Python step per token.
    ``faithful`` is False when lower-casing is not a safe stand-in for ``re.IGNORECASE``;
    then every lookup falls back to the regular expressions.
    """

    __slots__ = ("_hits", "faithful", "items", "lowered", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.lowered = text.lower()
        self.faithful = len(self.lowered) == len(text) and (
            text.isascii() or _CASE_EXOTIC.isdisjoint(text)
        )
        self.items: list[str] = []
        self._hits: list[int] | None = None
        if self.faithful:
            self.items = self._items()

    def _items(self) -> list[str]:
        lowered = self.lowered
        if lowered.isascii():
            # Hyphens become spaces, every other non-word, non-space character a stand-alone
            # NUL item, then str.split() does the rest.
            return lowered.translate(_ASCII_SEPARATORS).replace("\0", " \0 ").split()
        # re.split with a group alternates word, separator, word, ... (an empty word only
        # at either end).
        parts = _WORD_RUNS.split(lowered)
        words, seps = parts[0::2], parts[1::2]
        first = 0 if words[0] else 1
        last = len(words) if words[-1] else len(words) - 1
        items: list[str] = []
        for i in range(first, last):
            items.append(words[i])
            if i + 1 < last and not (seps[i] == " " or not seps[i].replace("-", "").strip()):
                items.append("\0")
        return items

    @property
    def tokens(self) -> list[str]:
        """The word tokens, in order."""
        return [item for item in self.items if item != "\0"]

    @property
    def glue(self) -> list[bool]:
        """``glue[i]``: only whitespace and hyphens separate token ``i`` from the next."""
        items = self.items
        words = [i for i, item in enumerate(items) if item != "\0"]
        return [items[i + 1] != "\0" for i in words[:-1]]

    def hits(self) -> list[int]:
        """Indexes of items that may start a term of any lexicon (memoised; C speed)."""
        if self._hits is None:
            self._hits = list(compress(count(), map(_FIRST_TOKENS.__contains__, self.items)))
        return self._hits


_FIRST_TOKENS: set[str] = set()


class Lexicon:
    """A fixed set of terms; ``find`` returns the distinct terms present, sorted."""

    def __init__(self, terms: tuple[str, ...]) -> None:
        self.terms = terms
        self._canonical = {_squash(t): t for t in terms}
        alternatives = sorted((_pattern(t) for t in terms), key=len, reverse=True)
        self._regex = re.compile(r"\b(" + "|".join(alternatives) + r")(?:e?s)?\b", re.IGNORECASE)
        # The regex tries its alternatives in this order (stable sort, longest first).
        ordered = sorted(terms, key=lambda t: len(_pattern(t)), reverse=True)
        self._first: dict[str, list[tuple[int, str, int]]] = {}
        self._steps: list[list[dict[str, int]]] = []
        for priority, term in enumerate(ordered):
            words = [w for w in re.split(r"[\s-]+", term.lower()) if w]
            steps: list[dict[str, int]] = []
            for start in range(len(words)):
                whole = "".join(words[start:])
                pairs = [
                    ("".join(words[start:stop]), stop) for stop in range(start + 1, len(words))
                ]
                pairs += [(whole + suffix, len(words)) for suffix in ("", "s", "es")]
                step = dict(pairs)
                if len(step) != len(pairs):  # a token would be ambiguous: not supported
                    raise ValueError(f"ambiguous term {term!r}")
                steps.append(step)
            self._steps.append(steps)
            canonical = self._canonical[_squash(term)]
            for token, stop in steps[0].items():
                self._first.setdefault(token, []).append((priority, canonical, stop))
        _FIRST_TOKENS.update(self._first)

    def find(self, text: str) -> tuple[str, ...]:
        """The distinct terms of this lexicon that occur in ``text``."""
        return self.find_in(TextScan(text))

    def find_in(self, scan: TextScan) -> tuple[str, ...]:
        """``find`` on a text already scanned (same result, linear time)."""
        if not scan.faithful:
            matched = (
                self._canonical.get(_squash(m.group(1))) for m in self._regex.finditer(scan.text)
            )
            return tuple(sorted({term for term in matched if term is not None}))
        items = scan.items
        first = self._first
        found = set()
        free = 0  # the regex resumes after the end of its last match
        for i in scan.hits():
            if i < free:
                continue
            candidates = first.get(items[i])
            if candidates is None:
                continue
            for priority, canonical, stop in candidates:  # in priority order
                end = self._extend(self._steps[priority], items, i, stop)
                if end >= 0:
                    found.add(canonical)
                    free = end + 1
                    break
        return tuple(sorted(found))

    @staticmethod
    def _extend(steps: list[dict[str, int]], items: list[str], i: int, stop: int) -> int:
        """Index of the last item of the match starting at ``i``, or -1 (a ``"\\0"`` item
        is in no step, so a term never spans one)."""
        while stop < len(steps):
            i += 1
            if i >= len(items):
                return -1
            nxt = steps[stop].get(items[i])
            if nxt is None:
                return -1
            stop = nxt
        return i


# Characters that Python's case-insensitive regex matching equates with ASCII letters but
# that ``str.lower`` does not map to them (U+0130, U+0131, U+017F).
_ASCII_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s"})


def _squash(term: str) -> str:
    return re.sub(r"[\s-]+", "", term.translate(_ASCII_FOLD).lower())


def _pattern(term: str) -> str:
    return r"[\s-]*".join(re.escape(word) for word in re.split(r"[\s-]+", term))


RISK_TERMS = Lexicon(
    (
        # legal
        "legal",
        "lawsuit",
        "litigation",
        "liability",
        "attorney",
        "lawyer",
        "subpoena",
        # medical
        "medical",
        "diagnosis",
        "prescription",
        "dosage",
        "medication",
        "patient",
        "symptom",
        # security
        "security",
        "vulnerability",
        "exploit",
        "malware",
        "breach",
        "ransomware",
        "phishing",
        # credentials and secrets
        "credential",
        "password",
        "secret",
        "api key",
        "private key",
        "access token",
        "ssh key",
        # money movement
        "payment",
        "credit card",
        "bank account",
        "wire transfer",
        "refund",
        # compliance and personal data
        "compliance",
        "regulation",
        "regulatory",
        "gdpr",
        "hipaa",
        "pci",
        "sox",
        "audit",
        "pii",
        "personal data",
        "social security number",
        # operations
        "production",
        "prod",
    )
)

VALUE_TERMS = Lexicon(
    (
        "contract",
        "customer",
        "client",
        "revenue",
        "invoice",
        "executive",
        "ceo",
        "cfo",
        "cto",
        "board",
        "investor",
        "shareholder",
        "deal",
        "renewal",
        "churn",
        "enterprise",
        "sla",
        "forecast",
        "acquisition",
        "partnership",
        "pricing",
        "quotation",
        "roi",
        "kpi",
    )
)

DELIVERABLE_TERMS = Lexicon(
    (
        "proposal",
        "report",
        "presentation",
        "slide deck",
        "board deck",
        "memo",
        "press release",
        "statement of work",
        "email to",
        "letter to",
        "announcement",
    )
)

COMPLEXITY_TERMS = Lexicon(
    (
        "multi-step",
        "step by step",
        "analyze",
        "analyse",
        "analysis",
        "prove",
        "proof",
        "derive",
        "refactor",
        "architecture",
        "design a",
        "trade-off",
        "optimize",
        "optimise",
        "algorithm",
        "debug",
        "migrate",
        "migration",
        "compare and contrast",
        "root cause",
        "end-to-end",
        "implement",
        "benchmark",
        "concurrency",
        "distributed",
    )
)

# An action that destroys or irreversibly changes state.
DESTRUCTIVE_ACTION = re.compile(
    r"\b(?:delet(?:e|es|ed|ing)|drop(?:s|ped|ping)?|truncat(?:e|es|ed|ing)|wip(?:e|es|ed|ing)"
    r"|purg(?:e|es|ed|ing)|destroy(?:s|ed|ing)?|eras(?:e|es|ed|ing)|rm\s+-rf"
    r"|force[\s-]push(?:es|ed|ing)?|reset\s+--hard)(?!\w)",
    re.IGNORECASE,
)
# What a destructive action must not hit without a second look (same sentence).
PRODUCTION_TARGET = re.compile(
    r"\b(?:production|prod|live\s+(?:system|site|server|database)s?|database|db|backups?"
    r"|customer\s+data|user\s+data)\b",
    re.IGNORECASE,
)
SENTENCE_BREAK = re.compile(r"(?<=[.!?;])\s+|\n+")
# Key material or an assignment of a secret value, pasted into the prompt. Each alternative
# with the literals (lower-cased) that every one of its matches starts with.
_SECRET_PARTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-----begin",), r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    (("akia",), r"\bAKIA[0-9A-Z]{16}\b"),
    (("sk-", "rk-"), r"\b(?:sk|rk)-[A-Za-z0-9_-]{16,}"),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    (("xox",), r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),
    (
        ("password", "passwd", "pwd", "secret", "token", "api"),
        r"\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[:=]\s*\S{6,}",
    ),
)
SECRET_MATERIAL = re.compile("|".join(source for _, source in _SECRET_PARTS), re.IGNORECASE)
_SECRET_SEARCH = tuple(
    (anchors, re.compile(source, re.IGNORECASE)) for anchors, source in _SECRET_PARTS
)
# A sum of money: a currency sign before a number, or a currency word after it.
MONEY_AMOUNT = re.compile(
    r"[$\u20ac\u00a3\u00a5]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:k|m|bn|million|billion)\b)?"
    r"|\b\d[\d,]*(?:\.\d+)?\s?(?:k|m|bn|million|billion)?\s?(?:usd|eur|gbp|dollars|euros)\b",
    re.IGNORECASE,
)
QUESTION = re.compile(r"\?+")
FENCE_LINE = re.compile(r"^\s*(?:```|~~~)")
# A line that reads as source code outside a fence.
CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |function |const |let |var |public |private "
    r"|#include|SELECT |INSERT |UPDATE |DELETE FROM |CREATE TABLE |return\b)"
    r"|[;{}]\s*$|=>|\)\s*:\s*$"
)

# Literals (lower-cased) of which every match of the pattern contains at least one.
_DESTRUCTIVE_ANCHORS = (
    "delet",
    "drop",
    "truncat",
    "wip",
    "purg",
    "destroy",
    "eras",
    "-rf",
    "force",
    "--hard",
)
_MONEY_ANCHORS = ("$", "\u20ac", "\u00a3", "\u00a5", "usd", "eur", "gbp", "dollar")


# What a line that CODE_LINE's first alternative matches starts with, after its indentation.
_CODE_STARTS = (
    "def ",
    "class ",
    "import ",
    "from ",
    "function ",
    "const ",
    "let ",
    "var ",
    "public ",
    "private ",
    "#include",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE FROM ",
    "CREATE TABLE ",
    "return",
)


def is_code_line(line: str) -> bool:
    """``CODE_LINE.search(line) is not None`` for a line without line breaks, in constant
    Python steps: the regex's unanchored alternatives tried at every position of a long
    prose line cost ~15 us per 1,000 characters. ``str.strip`` removes exactly what the
    pattern's ``\\s`` matches (both use ``str.isspace``)."""
    if "=>" in line:
        return True
    tail = line.rstrip()
    if tail.endswith((";", "{", "}")):
        return True
    if tail.endswith(":") and tail[:-1].rstrip().endswith(")"):
        return True
    return line.lstrip().startswith(_CODE_STARTS) and CODE_LINE.search(line) is not None


def count_questions(text: str) -> int:
    """``len(QUESTION.findall(text))``: runs of "?"."""
    if "??" not in text:
        return text.count("?")
    return len(QUESTION.findall(text))


def has_destructive_action(scan: TextScan) -> bool:
    """``DESTRUCTIVE_ACTION.search(scan.text) is not None``, skipped without a literal."""
    if scan.faithful and not any(a in scan.lowered for a in _DESTRUCTIVE_ANCHORS):
        return False
    return DESTRUCTIVE_ACTION.search(scan.text) is not None


def has_secret_material(scan: TextScan) -> bool:
    """``SECRET_MATERIAL.search(scan.text) is not None``, one alternative at a time."""
    if not scan.faithful:
        return SECRET_MATERIAL.search(scan.text) is not None
    lowered = scan.lowered
    for anchors, regex in _SECRET_SEARCH:
        starts = [i for i in (lowered.find(a) for a in anchors) if i >= 0]
        # A match starts with one of the anchors, so none starts before the first of them.
        if starts and regex.search(scan.text, min(starts)) is not None:
            return True
    return False


def count_money(scan: TextScan) -> int:
    """``len(MONEY_AMOUNT.findall(scan.text))``, skipped without a currency literal."""
    if scan.faithful and not any(a in scan.lowered for a in _MONEY_ANCHORS):
        return 0
    return len(MONEY_AMOUNT.findall(scan.text))
