"""The consumer's decoder for a batch of events: ``Codec.decode``'s verdicts, for less.

Most of a typed decode's cost is its regular expressions: msgspec runs a string field's
pattern on every event it decodes (about 0.4 µs each, 18 of them in a call event), and
most of those values repeat across a batch (tenant, persona, mode, model, producer, rate
card, ...). The batch decoder therefore decodes with *loose* types, the strict ones with
their string patterns taken out and everything else kept (types, lengths, bounds, literals,
unknown fields, the ``Money`` hook, ``__post_init__`` invariants), and then runs each
pattern once per distinct value of the batch.

The verdicts are the strict decoder's by construction: the strict types accept a message
exactly when the loose ones do and all of its pattern-checked strings match. A message the
loose decoder refuses, or with a string that fails its pattern, is left to the strict
decoder (``None`` here), which gives the verdict and the reason, worded as always.

A loose event is an instance of a subclass of its strict class (same fields, same tag,
``isinstance`` holds); its values are the ones the strict decoder would have produced.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from types import NoneType, UnionType
from typing import Any, Literal

import msgspec

from somaagent.domain.events._derived import Override, subclass_with
from somaagent.domain.events._envelope import Envelope

__all__ = ["BatchDecoder", "loose_annotation"]

_KEPT = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz")
Shape = Literal["one", "optional", "many"]


@dataclass(frozen=True, slots=True)
class _Check:
    """One pattern-checked field: its name, how its strings sit in it, the pattern's test."""

    field: str
    shape: Shape
    search: Callable[[str], object]

    def values(self, events: Sequence[Any]) -> set[str]:
        got = map(attrgetter(self.field), events)
        if self.shape == "one":
            return set(got)
        if self.shape == "optional":
            return set(got) - {None}
        return set(chain.from_iterable(got))

    def holds(self, event: Any, bad: set[str]) -> bool:
        value = getattr(event, self.field)
        if self.shape == "many":
            return not bad.intersection(value)
        return value not in bad


def _without_pattern(meta: msgspec.Meta) -> msgspec.Meta | None:
    kept = {name: getattr(meta, name) for name in _KEPT if getattr(meta, name) is not None}
    return msgspec.Meta(**kept) if kept else None


def _loose_str(annotation: Any) -> tuple[Any, str] | None:
    """``Annotated[str, ..., Meta(pattern=p), ...]`` without ``p``, and ``p``; else None."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return None
    base, *metas = typing.get_args(annotation)
    if base is not str:
        return None
    patterns = [m.pattern for m in metas if isinstance(m, msgspec.Meta) and m.pattern]
    if len(patterns) != 1:
        return None
    kept: list[Any] = []
    for meta in metas:
        if isinstance(meta, msgspec.Meta):
            meta = _without_pattern(meta)
        if meta is not None:
            kept.append(meta)
    loose: Any = typing.Annotated.__class_getitem__((str, *kept)) if kept else str
    return loose, patterns[0]


def loose_annotation(annotation: Any) -> tuple[Any, str, Shape] | None:
    """A field's type without its string pattern, the pattern, and where its strings are.

    Recognised: a pattern-checked string, the same or ``None``, and a list of them (the list
    may carry its own length bounds). Anything else is None: the field keeps its strict type.
    """
    one = _loose_str(annotation)
    if one is not None:
        return one[0], one[1], "one"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, UnionType) and len(args) == 2 and NoneType in args:
        inner = _loose_str(args[0] if args[1] is NoneType else args[1])
        if inner is not None:
            return typing.Optional[inner[0]], inner[1], "optional"  # noqa: UP045 - run time
    metas: tuple[Any, ...] = ()
    if origin is typing.Annotated:
        annotation, *rest = args
        metas = tuple(rest)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        item = _loose_str(args[0])
        if item is not None:
            loose: Any = list[item[0]]  # type: ignore[valid-type]
            if metas:
                loose = typing.Annotated.__class_getitem__((loose, *metas))  # type: ignore[attr-defined]
            return loose, item[1], "many"
    return None


def _loose_class(cls: type[Envelope]) -> tuple[type[Envelope], tuple[_Check, ...]]:
    """``cls`` with its string patterns taken out, and the checks that put them back."""
    overrides: list[Override] = []
    checks: list[_Check] = []
    for info in msgspec.structs.fields(cls):
        loose = loose_annotation(info.type)
        if loose is None:
            continue
        annotation, pattern, shape = loose
        checks.append(_Check(info.name, shape, re.compile(pattern).search))
        if info.default is not msgspec.NODEFAULT:
            overrides.append((info.name, annotation, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            factory = msgspec.field(default_factory=info.default_factory)
            overrides.append((info.name, annotation, factory))
        else:
            overrides.append((info.name, annotation))
    return subclass_with(cls, "Loose", overrides, __name__), tuple(checks)


class BatchDecoder:
    """Decode a batch with the loose types, then check each pattern per distinct value."""

    def __init__(self, classes: Iterable[type[Envelope]], dec_hook: Any) -> None:
        loose: list[type[Envelope]] = []
        self.checks: dict[type[Envelope], tuple[_Check, ...]] = {}
        self.strict_of: dict[type[Envelope], type[Envelope]] = {}  # loose class -> strict
        for cls in classes:
            loose_cls, checks = _loose_class(cls)
            loose.append(loose_cls)
            self.checks[loose_cls] = checks
            self.strict_of[loose_cls] = cls
        union: Any = typing.Union.__getitem__(tuple(loose))  # built at run time
        self._decode = msgspec.json.Decoder(union, dec_hook=dec_hook).decode

    def decode(self, values: Sequence[bytes], max_bytes: int) -> list[Envelope | None]:
        """Each value's event, or None where the strict decoder must give the verdict."""
        out: list[Envelope | None] = []
        by_class: dict[type[Envelope], list[int]] = {}
        decode = self._decode
        for index, value in enumerate(values):
            event: Envelope | None = None
            if len(value) <= max_bytes:
                try:
                    event = decode(value)
                except Exception:  # noqa: BLE001 - any refusal: the strict decoder words it
                    event = None
            if event is not None:
                by_class.setdefault(type(event), []).append(index)
            out.append(event)
        for cls, indices in by_class.items():
            self._check(cls, indices, out)
        return out

    def _check(self, cls: type[Envelope], indices: list[int], out: list[Envelope | None]) -> None:
        events = [out[i] for i in indices]
        for check in self.checks[cls]:
            bad = {v for v in check.values(events) if check.search(v) is None}
            if not bad:
                continue
            for i in indices:
                event = out[i]
                if event is not None and not check.holds(event, bad):
                    out[i] = None
