"""Subclasses of an event class with some fields' types replaced: the decoders' own.

The producer's check (``_producer_check``) and the batch decoder (``_batch_decode``) each
decode into such subclasses: the same fields, defaults, tag and invariants as the event
class, ``isinstance`` of it, with only the named fields' types changed.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec

from somaagent.domain.events._envelope import Envelope

__all__ = ["Override", "subclass_with"]

Override = tuple[str, Any] | tuple[str, Any, Any]  # (name, type) or (name, type, default)


def subclass_with(
    cls: type[Envelope], suffix: str, overrides: list[Override], module: str
) -> type[Envelope]:
    """``<cls name><suffix>``: ``cls`` with ``overrides``' field types, its own tag kept."""
    derived = msgspec.defstruct(
        f"{cls.__name__}{suffix}",
        overrides,
        bases=(cls,),
        kw_only=True,
        frozen=True,
        forbid_unknown_fields=True,
        tag=cls.__struct_config__.tag,
        module=module,
    )
    return typing.cast(type[Envelope], derived)
