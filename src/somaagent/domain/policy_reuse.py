"""When a policy verdict may be applied again without asking the engine (pure).

The policy returns, next to a verdict, the conditions under which that verdict stays the
same (``data.soma.gateway.decision.reuse``, documented in ``policy/soma/gateway.rego``):
paths whose values must be equal, arrays whose lengths must be equal, and ``a <= b``
comparisons between integers at two paths, for at most ``ttl_s`` seconds. The gateway
checks them on the next input; the policy, not the gateway, decides what they are, so a
changed policy changes what is reused. A path is a sequence of object keys and array
indexes into the policy input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from somaagent.domain.policy import PolicyError, Verdict, parse_verdict

__all__ = ["Reuse", "parse_decision", "parse_reuse", "value_at"]

Path = tuple[str | int, ...]

_MISSING = object()


def value_at(doc: Any, path: Path) -> Any:
    """The value at ``path`` in ``doc``, or a private marker when there is none."""
    node = doc
    for step in path:
        # Plain dicts and lists (what policy inputs are made of) first: the ``Mapping``
        # ABC check below costs more than the lookup, and this runs tens of times a call.
        node_type = type(node)
        if node_type is dict and type(step) is str:
            if step not in node:
                return _MISSING
            node = node[step]
        elif node_type is list and type(step) is int:
            if not 0 <= step < len(node):
                return _MISSING
            node = node[step]
        elif isinstance(step, str):
            if not isinstance(node, Mapping) or step not in node:
                return _MISSING
            node = node[step]
        else:
            if not isinstance(node, list | tuple) or not 0 <= step < len(node):
                return _MISSING
            node = node[step]
    return node


def _length(doc: Any, path: Path) -> int:
    node = value_at(doc, path)
    return len(node) if isinstance(node, list | tuple) else -1


def _nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class Reuse:
    """The conditions of one reusable verdict (see the module docstring)."""

    ttl_s: float
    equal: tuple[Path, ...]
    lengths: tuple[Path, ...]
    at_most: tuple[tuple[Path, Path], ...]

    def capture(self, doc: Any) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        """What ``doc`` has at the ``equal`` paths and the ``lengths`` paths."""
        values = tuple(value_at(doc, p) for p in self.equal)
        return values, tuple(_length(doc, p) for p in self.lengths)

    def holds(self, captured: tuple[tuple[Any, ...], tuple[int, ...]], doc: Any) -> bool:
        """Whether the verdict captured from one input also answers ``doc``."""
        values, lengths = captured
        for path, value in zip(self.equal, values, strict=True):
            if value is _MISSING or value_at(doc, path) != value:
                return False
        for path, length in zip(self.lengths, lengths, strict=True):
            if _length(doc, path) != length:
                return False
        for left, right in self.at_most:
            a, b = value_at(doc, left), value_at(doc, right)
            if not (_nat(a) and _nat(b) and a <= b):
                return False
        return True


def _path(raw: Any, what: str) -> Path:
    if not isinstance(raw, list) or not raw:
        raise PolicyError(f"reuse.{what}: a path is a non-empty array, got {raw!r}")
    for step in raw:
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise PolicyError(f"reuse.{what}: a path step is a key or an index, got {step!r}")
    return tuple(raw)


def parse_reuse(raw: Any) -> Reuse | None:
    """The :class:`Reuse` in a decision's ``reuse`` (``None``: not reusable)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PolicyError(f"reuse is not an object or null: {raw!r}")
    ttl = raw.get("ttl_s")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0:
        raise PolicyError(f"reuse.ttl_s is not a number >= 0: {ttl!r}")
    equal, lengths, at_most = raw.get("equal"), raw.get("lengths", []), raw.get("at_most", [])
    if not isinstance(equal, list) or not isinstance(lengths, list):
        raise PolicyError("reuse.equal and reuse.lengths are arrays of paths")
    if not isinstance(at_most, list):
        raise PolicyError("reuse.at_most is an array of [path, path] pairs")
    pairs: list[tuple[Path, Path]] = []
    for pair in at_most:
        if not isinstance(pair, list) or len(pair) != 2:
            raise PolicyError(f"reuse.at_most: want [path, path], got {pair!r}")
        pairs.append((_path(pair[0], "at_most"), _path(pair[1], "at_most")))
    return Reuse(
        ttl_s=float(ttl),
        equal=tuple(_path(p, "equal") for p in equal),
        lengths=tuple(_path(p, "lengths") for p in lengths),
        at_most=tuple(pairs),
    )


def parse_decision(result: object) -> tuple[Verdict, Reuse | None]:
    """The verdict and reuse conditions in ``data.soma.gateway.decision``."""
    if not isinstance(result, Mapping) or "verdict" not in result:
        raise PolicyError(f"decision is not an object with a verdict: {result!r:.200}")
    return parse_verdict(result["verdict"]), parse_reuse(result.get("reuse"))
