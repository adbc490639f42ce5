"""YAML for configuration files that must not hide a mistake (pure)."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load_strict"]


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                continue  # unhashable or exotic: SafeLoader itself reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_strict(text: str) -> Any:
    """The document in ``text`` (safe loading); ``yaml.YAMLError`` on invalid YAML or a
    key repeated in one mapping. Callers check the document's shape."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
