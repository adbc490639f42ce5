"""Typed reads of one YAML mapping, each failure a one-line ``CatalogError``.

Every message starts with where the value sits (``model 'x'`` or ``models[3]``) and names
the field, so an operator can fix the file without reading code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from somaagent.domain.routing._errors import CatalogError

__all__ = ["FieldReader"]

# The most fraction digits a price may carry: ClickHouse Decimal(38, 18), as in the events.
MAX_PRICE_FRACTION_DIGITS = 18
_DECIMAL_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class FieldReader:
    """Reads the fields of one mapping; rejects keys outside ``allowed`` up front."""

    def __init__(self, raw: object, where: str, allowed: frozenset[str]) -> None:
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: expected a mapping, got {_kind(raw)}")
        self.where = where
        self._raw: Mapping[object, object] = raw
        unknown = sorted(str(k) for k in raw if k not in allowed)
        if unknown:
            raise CatalogError(
                f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )

    def error(self, field: str, problem: str) -> CatalogError:
        """A ``CatalogError`` about ``field`` of this mapping."""
        return CatalogError(f"{self.where}: field {field!r}: {problem}")

    def has(self, field: str) -> bool:
        """Whether ``field`` is present (even if null)."""
        return field in self._raw

    def raw(self, field: str) -> object:
        """The value of ``field`` as written (None when absent)."""
        return self._raw.get(field)

    def _get(self, field: str, required: bool) -> object:
        if field not in self._raw:
            if required:
                raise self.error(field, "required")
            return None
        return self._raw[field]

    def text(self, field: str, *, pattern: re.Pattern[str] | None = None) -> str:
        """A required non-empty string, optionally matching ``pattern`` in full."""
        value = self._get(field, required=True)
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected a non-empty string, got {_kind(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(field, f"{value!r} does not match {pattern.pattern}")
        return value

    def optional_text(self, field: str) -> str | None:
        """A string or null/absent."""
        value = self._get(field, required=False)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected a non-empty string or null, got {_kind(value)}")
        return value

    def boolean(self, field: str, *, default: bool | None = None) -> bool:
        """A YAML boolean; required unless ``default`` is given."""
        value = self._get(field, required=default is None)
        if value is None and default is not None:
            return default
        if not isinstance(value, bool):
            raise self.error(field, f"expected true or false, got {_kind(value)}")
        return value

    def integer(self, field: str, *, minimum: int, default: int | None = None) -> int:
        """An integer ``>= minimum`` (booleans are not integers here); required unless
        ``default`` is given."""
        value = self._get(field, required=default is None)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(field, f"expected an integer, got {_kind(value)}")
        if value < minimum:
            raise self.error(field, f"must be >= {minimum}, got {value}")
        return value

    def number(self, field: str, *, default: float) -> float:
        """A positive, finite number (an integer or a YAML float); ``default`` when absent."""
        value = self._get(field, required=False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"expected a number, got {_kind(value)}")
        if not 0 < value < float("inf"):
            raise self.error(field, f"must be a positive, finite number, got {value!r}")
        return float(value)

    def price(self, field: str) -> Decimal:
        """A required non-negative USD amount written as a quoted decimal or an integer.

        YAML floats are refused: ``0.1`` would pass through a binary float, and a cost must
        be reproducible to the last digit.
        """
        value = self._get(field, required=True)
        if isinstance(value, bool) or isinstance(value, float):
            raise self.error(
                field, f"write the price as a quoted decimal string, e.g. '{value}', not a float"
            )
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(field, f"expected a decimal string, got {_kind(value)}")
        text = value.strip()
        if text.startswith("-"):
            raise self.error(field, f"price must not be negative, got {text}")
        if not _DECIMAL_TEXT.fullmatch(text):
            raise self.error(field, f"{text!r} is not a plain decimal number")
        try:
            amount = Decimal(text)
        except InvalidOperation as exc:  # pragma: no cover - the pattern admits only digits
            raise self.error(field, f"{text!r} is not a decimal number") from exc
        exponent = amount.as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > MAX_PRICE_FRACTION_DIGITS:
            raise self.error(field, f"at most {MAX_PRICE_FRACTION_DIGITS} fraction digits")
        return amount

    def strings(self, field: str) -> tuple[str, ...]:
        """A list of non-empty strings; absent or null means empty."""
        value = self._get(field, required=False)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of strings, got {_kind(value)}")
        items: list[str] = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise self.error(field, f"expected non-empty strings, got {_kind(item)}")
            items.append(item)
        return tuple(items)

    def milliseconds(self, field: str) -> dict[str, float]:
        """A mapping name -> positive number of ms that must contain ``default``."""
        value = self._get(field, required=True)
        if not isinstance(value, Mapping) or not value:
            raise self.error(field, f"expected a mapping persona -> ms, got {_kind(value)}")
        result: dict[str, float] = {}
        for key, ms in value.items():
            if not isinstance(key, str):
                raise self.error(field, f"persona names must be strings, got {_kind(key)}")
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not ms > 0:
                raise self.error(field, f"{key}: expected a positive number of ms, got {ms!r}")
            if ms == float("inf"):
                raise self.error(field, f"{key}: must be finite")
            result[key] = float(ms)
        if "default" not in result:
            raise self.error(field, "needs a 'default' entry")
        return result

    def nested(self, field: str, allowed: frozenset[str]) -> FieldReader:
        """A reader for the mapping under ``field``."""
        value = self._get(field, required=True)
        return FieldReader(value, f"{self.where}: field {field!r}", allowed)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"string {value!r}" if len(value) <= 40 else "a long string"
    return type(value).__name__
