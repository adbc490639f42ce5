"""The producer's check of its own bytes, without rebuilding its free-form JSON objects.

``Codec.encode`` validates every event it serialises exactly as a consumer will. Decoding
an event's free-form objects (``decision_tree``, ``router_metadata``, ...) back into
Python is most of that cost (about half of a call event's), yet it cannot find anything
when the bytes come from our own encoder: any value it encodes is valid JSON, and a
``dict`` encodes as an object. The check therefore decodes those fields as ``msgspec.Raw``
(their JSON is still scanned, not built) and applies their only constraint, at most 64
top-level keys, to the Python object instead. A dict's key count is never below the
decoded object's, so this is never more lenient than the consumer; every other field is
decoded and validated by the consumer's own types, ``__post_init__`` invariants included.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from types import MappingProxyType, NoneType, UnionType
from typing import Any

import msgspec

from somaagent.domain.events._derived import Override, subclass_with
from somaagent.domain.events._envelope import Envelope
from somaagent.domain.events._errors import ContractError
from somaagent.domain.events._types import JsonObject

__all__ = ["ProducerCheck"]

# msgspec's names for what it found, as its decoder words the same mistake.
_JSON_NAMES: dict[type, str] = {NoneType: "null", list: "array", tuple: "array"}
_CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length", "tz")
_JSON_OBJECT_MAX_KEYS: int = typing.get_args(JsonObject)[1].max_length


def _json_object_field(annotation: Any) -> bool | None:
    """True for ``JsonObject``, False for ``JsonObject | None``, None for anything else.

    An outer ``Annotated`` carrying only documentation (a description) is looked through.
    """
    if typing.get_origin(annotation) is typing.Annotated and all(
        isinstance(m, msgspec.Meta) and not any(getattr(m, c) is not None for c in _CONSTRAINTS)
        for m in annotation.__metadata__
    ):
        annotation = typing.get_args(annotation)[0]
    if annotation == JsonObject:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, UnionType) and set(args) == {
        JsonObject,
        NoneType,
    }:
        return False
    return None


def _check_class(cls: type[Envelope]) -> tuple[type[Envelope], Mapping[str, bool]]:
    """``cls`` with its JSON-object fields as ``Raw``, and those fields (name -> required)."""
    objects: dict[str, bool] = {}
    overrides: list[Override] = []
    for info in msgspec.structs.fields(cls):
        required = _json_object_field(info.type)
        if required is None:
            continue
        objects[info.name] = required
        # ``Raw`` alone, also for an optional field: msgspec takes no union with ``Raw``,
        # and a raw ``null`` is as good (the Python value was checked to be None or a dict).
        if required:
            overrides.append((info.name, msgspec.Raw))
        else:
            overrides.append((info.name, msgspec.Raw, info.default))
    if not overrides:
        return cls, MappingProxyType(objects)
    return subclass_with(cls, "ProducerCheck", overrides, __name__), MappingProxyType(objects)


class ProducerCheck:
    """A decoder for the producer's own bytes, plus the object-side rules it moves out."""

    def __init__(self, classes: Iterable[type[Envelope]], dec_hook: Any) -> None:
        checked: list[type[Envelope]] = []
        self._objects: dict[type[Envelope], Mapping[str, bool]] = {}
        for cls in classes:
            check_cls, objects = _check_class(cls)
            checked.append(check_cls)
            if objects:
                self._objects[cls] = objects
        union: Any = typing.Union.__getitem__(tuple(checked))  # built at run time
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(union, dec_hook=dec_hook)

    def adopt(self, subclass: type[Envelope], cls: type[Envelope]) -> None:
        """Check ``subclass``'s events by ``cls``'s object rules (a decoder's own subclass
        of an event class, e.g. the batch decoder's loose ones, re-encoded)."""
        if cls in self._objects:
            self._objects[subclass] = self._objects[cls]

    def check_objects(self, event: Envelope) -> None:
        """The JSON-object fields' own rules, on the Python values about to be encoded."""
        objects = self._objects.get(type(event))
        if objects is None:
            return
        for name, required in objects.items():
            value = getattr(event, name)
            if value is None and not required:
                continue
            if type(value) is not dict:
                got = _JSON_NAMES.get(type(value), type(value).__name__)
                wanted = "object" if required else "object | null"
                raise ContractError(f"{name}: Expected `{wanted}`, got `{got}`")
            if len(value) > _JSON_OBJECT_MAX_KEYS:
                raise ContractError(
                    f"{name}: Expected `object` of length <= {_JSON_OBJECT_MAX_KEYS}"
                )
