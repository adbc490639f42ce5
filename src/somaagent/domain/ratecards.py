"""Versioned rate cards: what each model cost, from when (pure).

A rate card is a dated price list: a ``version`` (the string every priced telemetry event
carries as ``rate_card_version``), the instant it takes effect (``effective_from``) and, for
each model, either per-1K token prices (``TokenPricing``) or a GPU cost model
(``GpuPricing``: price per GPU-hour x GPUs x measured GPU ms) with the worst-case compute
milliseconds per token (``max_ms_per_token``: a call's GPU ms is expected to stay within
``(input_tokens + output_tokens) x max_ms_per_token``), which bounds what a reservation
holds before the real GPU ms are known.

A version is immutable: once stored, ``(model_id, version)`` always means the same prices,
so any stored cost can be recomputed from its event. Two versions of one model may not take
effect at the same instant (``RateBook`` refuses the overlap), so "the price of model M at
instant T" always has exactly one answer.

``parse_ratecards`` reads the YAML format documented at the top of the shipped
``ratecards.default.yaml``; every refusal is one ``RateCardError`` line naming the file, the
card and the model. Reading files and databases is the caller's job.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from itertools import pairwise
from types import MappingProxyType

import yaml

from somaagent.domain.routing import GpuPricing, Pricing, TokenPricing
from somaagent.domain.strict_yaml import load_strict

__all__ = [
    "DEFAULT_RATECARDS_RESOURCE",
    "RATECARDS_FORMAT_VERSION",
    "RateBook",
    "RateCardEntry",
    "RateCardError",
    "default_ratecards_text",
    "parse_ratecards",
    "plain_decimal",
]

DEFAULT_RATECARDS_RESOURCE = "ratecards.default.yaml"
RATECARDS_FORMAT_VERSION = 1

# The version travels in events as a SafeName, the model id as a ModelId (domain.events).
_VERSION = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
_MODEL_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,256}")
# Fits numeric(38, 18) / ClickHouse Decimal(38, 18): 20 integer and 18 fraction digits.
_AMOUNT = re.compile(r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,18})?")
_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_MAX_GPUS = 100_000
_TOP_KEYS = frozenset({"version", "cards"})
_CARD_KEYS = frozenset({"version", "effective_from", "source", "models"})
_TOKEN_KEYS = ("input_per_1k", "output_per_1k", "cached_input_per_1k")
_GPU_KEYS = ("gpu_hour_usd", "gpus", "max_ms_per_token")
_MODEL_KEYS = frozenset(_TOKEN_KEYS + _GPU_KEYS)


class RateCardError(ValueError):
    """A rate card is malformed or conflicts with another; one line naming card and model."""


@dataclass(frozen=True, slots=True)
class RateCardEntry:
    """The price of one model under one rate-card version, from ``effective_from`` on.

    ``effective_from`` is aware and normalised to UTC. ``max_ms_per_token`` is required
    (and positive) for ``GpuPricing`` and must be ``None`` for ``TokenPricing``. Amounts are
    non-negative and fit ``numeric(38, 18)``. Construction raises ``RateCardError``.
    """

    model_id: str
    version: str
    effective_from: datetime
    pricing: Pricing
    max_ms_per_token: Decimal | None
    source: str | None

    def __post_init__(self) -> None:
        where = f"model {self.model_id!r}: version {self.version!r}"
        if not _MODEL_ID.fullmatch(self.model_id):
            raise RateCardError(f"{where}: model id must match {_MODEL_ID.pattern}")
        if not _VERSION.fullmatch(self.version):
            raise RateCardError(f"{where}: version must match {_VERSION.pattern}")
        if self.effective_from.tzinfo is None:
            raise RateCardError(f"{where}: effective_from must be an aware datetime")
        object.__setattr__(self, "effective_from", self.effective_from.astimezone(UTC))
        if isinstance(self.pricing, GpuPricing):
            _check_amount(where, "gpu_hour_usd", self.pricing.gpu_hour_usd)
            if not 1 <= self.pricing.gpus <= _MAX_GPUS:
                raise RateCardError(f"{where}: gpus must be 1..{_MAX_GPUS}")
            if self.max_ms_per_token is None:
                raise RateCardError(f"{where}: a GPU-priced model needs max_ms_per_token")
            _check_amount(where, "max_ms_per_token", self.max_ms_per_token)
            if self.max_ms_per_token <= 0:
                raise RateCardError(f"{where}: max_ms_per_token must be > 0")
        else:
            for name in _TOKEN_KEYS:
                _check_amount(where, name, getattr(self.pricing, name))
            if self.max_ms_per_token is not None:
                raise RateCardError(f"{where}: max_ms_per_token applies to GPU-priced models only")


def plain_decimal(value: Decimal) -> str:
    """``value`` as plain text without exponent or trailing fraction zeros; never rounds
    (``Decimal.normalize`` would, to the context's 28 digits)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _check_amount(where: str, name: str, value: Decimal) -> None:
    if not value.is_finite() or value < 0:
        raise RateCardError(f"{where}: {name} must be a non-negative decimal, got {value}")
    if not _AMOUNT.fullmatch(plain_decimal(value)):
        raise RateCardError(f"{where}: {name} {value} does not fit numeric(38, 18)")


class RateBook:
    """An immutable set of rate-card entries, looked up by version or by instant.

    Construction raises ``RateCardError`` when a ``(model_id, version)`` appears twice or
    when two versions of one model share an ``effective_from`` (an overlap).
    """

    __slots__ = ("_by_key", "_by_model", "_entries", "_starts")

    def __init__(self, entries: Iterable[RateCardEntry]) -> None:
        by_key: dict[tuple[str, str], RateCardEntry] = {}
        grouped: dict[str, list[RateCardEntry]] = {}
        for entry in entries:
            key = (entry.model_id, entry.version)
            if key in by_key:
                raise RateCardError(
                    f"model {entry.model_id!r}: version {entry.version!r} is given twice"
                )
            by_key[key] = entry
            grouped.setdefault(entry.model_id, []).append(entry)
        for model_id, versions in grouped.items():
            versions.sort(key=lambda e: e.effective_from)
            for a, b in pairwise(versions):
                if a.effective_from == b.effective_from:
                    raise RateCardError(
                        f"model {model_id!r}: versions {a.version!r} and {b.version!r} both"
                        f" take effect at {_iso(a.effective_from)} (overlapping versions);"
                        " give each version its own effective_from"
                    )
        self._by_key = MappingProxyType(by_key)
        self._by_model = MappingProxyType({m: tuple(v) for m, v in grouped.items()})
        self._starts = MappingProxyType(
            {m: tuple(e.effective_from for e in v) for m, v in grouped.items()}
        )
        self._entries = tuple(e for m in sorted(grouped) for e in self._by_model[m])

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"RateBook({len(self._entries)} entries, {len(self._by_model)} models)"

    def current(self, model_id: str, at: datetime) -> RateCardEntry | None:
        """The entry of ``model_id`` in effect at ``at`` (aware): the latest
        ``effective_from <= at``; ``None`` when no version had taken effect yet."""
        if at.tzinfo is None:
            raise ValueError("at must be an aware datetime")
        starts = self._starts.get(model_id)
        if not starts:
            return None
        index = bisect_right(starts, at) - 1
        return self._by_model[model_id][index] if index >= 0 else None

    def get(self, model_id: str, version: str) -> RateCardEntry | None:
        """The entry of ``model_id`` under ``version``, or ``None``."""
        return self._by_key.get((model_id, version))

    def versions(self, model_id: str) -> tuple[RateCardEntry, ...]:
        """Every entry of ``model_id``, oldest ``effective_from`` first."""
        return self._by_model.get(model_id, ())

    def entries(self) -> tuple[RateCardEntry, ...]:
        """Every entry, by model id, then oldest ``effective_from`` first."""
        return self._entries


def default_ratecards_text() -> str:
    """The rate cards shipped with the package (``ratecards.default.yaml``)."""
    package = resources.files("somaagent.domain")
    return (package / DEFAULT_RATECARDS_RESOURCE).read_text(encoding="utf-8")


def parse_ratecards(text: str, *, source: str) -> list[RateCardEntry]:
    """Parse rate-card YAML into entries, in file order; ``source`` names the text in errors.

    Refused, each with a ``RateCardError`` naming ``source``, the card and the model:
    invalid YAML or a repeated key, an unknown field, a missing price, both token and GPU
    prices, a negative price, a YAML float (prices are quoted decimals), more than 18
    fraction digits, a version or timestamp that is not a quoted string, an
    ``effective_from`` without a zone, a repeated card version, and overlapping versions
    (two versions of one model with the same ``effective_from``).
    """
    try:
        document = load_strict(text)
    except yaml.YAMLError as exc:
        raise RateCardError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    top = _Fields(document, source, _TOP_KEYS)
    version = top.require("version")
    if type(version) is not int or version != RATECARDS_FORMAT_VERSION:
        raise top.error("version", f"unsupported format {version!r} (expected 1)")
    cards = top.require("cards")
    if not isinstance(cards, list) or not cards:
        raise top.error("cards", "expected a non-empty list of rate cards")
    entries: list[RateCardEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(cards):
        card = _card(raw, f"{source}: cards[{index}]", source)
        if card[0].version in seen:
            raise RateCardError(f"{source}: card {card[0].version!r} is given twice")
        seen.add(card[0].version)
        entries.extend(card)
    try:
        RateBook(entries)
    except RateCardError as exc:
        raise RateCardError(f"{source}: {exc}") from None
    return entries


def _card(raw: object, where: str, source: str) -> list[RateCardEntry]:
    if isinstance(raw, Mapping) and isinstance(raw.get("version"), str):
        where = f"{source}: card {raw['version']!r}"
    fields = _Fields(raw, where, _CARD_KEYS)
    version = fields.text("version")
    if not _VERSION.fullmatch(version):
        raise fields.error("version", f"{version!r} does not match {_VERSION.pattern}")
    effective_from = _instant(fields)
    card_source = fields.optional_text("source")
    models = fields.require("models")
    if not isinstance(models, Mapping) or not models:
        raise fields.error("models", "expected a non-empty mapping model_id -> prices")
    entries = []
    for model_id, prices in models.items():
        if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
            raise fields.error("models", f"model id {model_id!r} must match {_MODEL_ID.pattern}")
        pricing, max_ms = _pricing(_Fields(prices, f"{where}: model {model_id!r}", _MODEL_KEYS))
        entries.append(
            RateCardEntry(
                model_id=model_id,
                version=version,
                effective_from=effective_from,
                pricing=pricing,
                max_ms_per_token=max_ms,
                source=card_source,
            )
        )
    return entries


def _instant(fields: _Fields) -> datetime:
    value = fields.require("effective_from")
    if not isinstance(value, str) or not _INSTANT.fullmatch(value):
        raise fields.error(
            "effective_from",
            f"expected a quoted RFC 3339 timestamp with a zone, e.g. '2026-11-01T00:00:00Z',"
            f" got {_kind(value)}",
        )
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise fields.error("effective_from", f"{value!r} is not a real instant") from None


def _pricing(fields: _Fields) -> tuple[Pricing, Decimal | None]:
    token = [k for k in _TOKEN_KEYS if fields.has(k)]
    gpu = [k for k in _GPU_KEYS if fields.has(k)]
    if token and gpu:
        raise fields.problem(
            f"has both per-1K token prices ({', '.join(token)}) and a GPU cost model"
            f" ({', '.join(gpu)}); give exactly one"
        )
    if gpu:
        gpus = fields.require("gpus")
        if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= _MAX_GPUS:
            raise fields.error("gpus", f"expected an integer 1..{_MAX_GPUS}, got {_kind(gpus)}")
        max_ms = fields.amount("max_ms_per_token")
        if max_ms <= 0:
            raise fields.error("max_ms_per_token", "must be > 0")
        return GpuPricing(gpu_hour_usd=fields.amount("gpu_hour_usd"), gpus=gpus), max_ms
    if token:
        pricing = TokenPricing(
            input_per_1k=fields.amount("input_per_1k"),
            output_per_1k=fields.amount("output_per_1k"),
            cached_input_per_1k=fields.amount("cached_input_per_1k"),
        )
        return pricing, None
    raise fields.problem(
        "no prices; give input_per_1k, output_per_1k and cached_input_per_1k,"
        " or gpu_hour_usd, gpus and max_ms_per_token",
    )


class _Fields:
    """Typed reads of one YAML mapping; unknown keys are refused up front."""

    def __init__(self, raw: object, where: str, allowed: frozenset[str]) -> None:
        if not isinstance(raw, Mapping):
            raise RateCardError(f"{where}: expected a mapping, got {_kind(raw)}")
        unknown = sorted(str(k) for k in raw if k not in allowed)
        if unknown:
            raise RateCardError(
                f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )
        self._raw: Mapping[object, object] = raw
        self._where = where

    def error(self, field: str, problem: str) -> RateCardError:
        return RateCardError(f"{self._where}: field {field!r}: {problem}")

    def problem(self, problem: str) -> RateCardError:
        return RateCardError(f"{self._where}: {problem}")

    def has(self, field: str) -> bool:
        return field in self._raw

    def require(self, field: str) -> object:
        if field not in self._raw:
            raise self.error(field, "required")
        return self._raw[field]

    def text(self, field: str) -> str:
        value = self.require(field)
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected a quoted non-empty string, got {_kind(value)}")
        return value

    def optional_text(self, field: str) -> str | None:
        value = self._raw.get(field)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.error(field, f"expected a non-empty string, got {_kind(value)}")
        return value

    def amount(self, field: str) -> Decimal:
        """A non-negative quoted decimal (or YAML integer) that fits numeric(38, 18).

        YAML floats are refused: ``0.1`` would pass through a binary float, and every cost
        must be reproducible to the last digit.
        """
        value = self.require(field)
        if isinstance(value, float):
            raise self.error(field, f"write it as a quoted decimal, e.g. '{value}', not a float")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(field, f"expected a quoted decimal, got {_kind(value)}")
        text = value.strip()
        if text.startswith("-"):
            raise self.error(field, f"must not be negative, got {text}")
        if not _AMOUNT.fullmatch(text):
            raise self.error(
                field, f"{text!r} is not a plain decimal of at most 20.18 digits (numeric(38,18))"
            )
        return Decimal(text)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"{value!r}" if len(value) <= 40 else "a long string"
    return f"{type(value).__name__} {value!r}"[:60]


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")
