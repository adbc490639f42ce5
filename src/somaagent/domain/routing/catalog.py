"""The model catalog: which models exist, on which tier, where, at what price, for whom.

A catalog is immutable once loaded. ``load_catalog`` parses YAML text (reading the file is
the caller's job) and refuses anything doubtful with a one-line ``CatalogError`` naming the
model and the field. ``render_catalog`` fills ``${NAME}`` placeholders (endpoint URLs) before
loading; the settings layer supplies the values.

An entry is *live* when it is enabled and has an endpoint (``base_url``); only live entries
are ever routed to. Prices are ``Decimal`` USD, either per 1K tokens (provider rate card) or
a GPU cost model (``gpu_hour_usd`` x ``gpus`` x measured GPU time) for self-hosted models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import resources
from types import MappingProxyType

import yaml

from somaagent.domain.rate_limits import RateLimits
from somaagent.domain.routing._entry import (
    DEFAULT_DEVELOPER_PERSONAS,
    DEFAULT_DEVELOPER_ROLES,
    TIERS,
    Concurrency,
    GpuPricing,
    ModelEntry,
    Pricing,
    Tier,
    TokenPricing,
)
from somaagent.domain.routing._errors import CatalogError
from somaagent.domain.routing._fields import FieldReader
from somaagent.domain.strict_yaml import load_strict

__all__ = [
    "CATALOG_VERSION",
    "DEFAULT_CATALOG_RESOURCE",
    "Catalog",
    "default_catalog_text",
    "load_catalog",
    "render_catalog",
]

DEFAULT_CATALOG_RESOURCE = "catalog.default.yaml"
CATALOG_VERSION = 1

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A substituted value lands inside a YAML scalar: no quotes, backslashes, spaces or controls.
_SAFE_VALUE = re.compile(r"[!#-\[\]-~]*")
# Ids and revisions travel in events as SafeName/ModelId (see domain.events): same alphabet.
_MODEL_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,256}")
_REVISION = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
_TAG = _REVISION
# http(s), host and port, plain path; no userinfo, query or fragment (where credentials hide).
_BASE_URL = re.compile(
    r"https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/-]*)?"
)
# Branch-like refs move under you; an enabled model must name an immutable revision.
_MOVING_REFS = frozenset({"main", "master", "latest", "head", "dev"})
_TOP_KEYS = frozenset({"version", "models"})
_ENTRY_KEYS = frozenset(
    {
        "model_id",
        "display_name",
        "tier",
        "enabled",
        "base_url",
        "revision",
        "context_window",
        "pricing",
        "allowed_personas",
        "developer_only",
        "latency_sla_ms",
        "license",
        "tags",
        "concurrency",
        "rate_limits",
    }
)
_RATE_KEYS = frozenset({"rpm", "tpm"})
_CONCURRENCY_KEYS = frozenset({"max_in_flight", "max_queued", "max_wait_ms"})
# Unless the catalog says otherwise: 8 waiting calls per running one, 30 s each at most.
DEFAULT_QUEUED_PER_SLOT = 8
DEFAULT_MAX_WAIT_MS = 30_000.0
_TOKEN_PRICE_KEYS = ("input_per_1k", "output_per_1k", "cached_input_per_1k")
_GPU_PRICE_KEYS = ("gpu_hour_usd", "gpus")
_PRICING_KEYS = frozenset(_TOKEN_PRICE_KEYS + _GPU_PRICE_KEYS)


class Catalog:
    """An immutable, ordered set of ``ModelEntry`` keyed by ``model_id``."""

    __slots__ = ("_by_id", "_entries")

    def __init__(self, entries: tuple[ModelEntry, ...]) -> None:
        by_id: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.model_id in by_id:
                raise CatalogError(f"model {entry.model_id!r}: field 'model_id': duplicate id")
            by_id[entry.model_id] = entry
        self._entries = entries
        self._by_id = MappingProxyType(by_id)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def __repr__(self) -> str:
        return f"Catalog({[e.model_id for e in self._entries]!r})"

    @property
    def entries(self) -> tuple[ModelEntry, ...]:
        """Every entry, in file order."""
        return self._entries

    def get(self, model_id: str) -> ModelEntry | None:
        """The entry named ``model_id``, or None."""
        return self._by_id.get(model_id)

    def list(self, *, tier: Tier | None = None) -> tuple[ModelEntry, ...]:
        """Every entry (live or not), optionally of one tier, in file order."""
        return tuple(e for e in self._entries if tier is None or e.tier == tier)

    def live(self, tier: Tier | None = None) -> tuple[ModelEntry, ...]:
        """Enabled entries with an endpoint, optionally of one tier, in file order."""
        return tuple(e for e in self.list(tier=tier) if e.live)

    def allowed_for(
        self,
        persona: str,
        role: str,
        *,
        tier: Tier | None = None,
        developer_personas: frozenset[str] = DEFAULT_DEVELOPER_PERSONAS,
        developer_roles: frozenset[str] = DEFAULT_DEVELOPER_ROLES,
    ) -> tuple[ModelEntry, ...]:
        """Live entries this persona/role may use (e.g. for ``GET /v1/models``)."""
        return tuple(
            e
            for e in self.live(tier)
            if e.admits(
                persona,
                role,
                developer_personas=developer_personas,
                developer_roles=developer_roles,
            )
        )


def load_catalog(text: str) -> Catalog:
    """Parse rendered catalog YAML into a ``Catalog``; raise ``CatalogError`` on any doubt.

    Rejected: YAML errors, duplicate keys, unknown keys, an unknown tier, both or no pricing,
    negative or float prices, duplicate model ids, an enabled entry without ``base_url`` or
    on a moving revision (``main``, ``latest``...), an unrendered ``${...}`` placeholder.
    """
    try:
        document = load_strict(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog: invalid YAML: {' '.join(str(exc).split())}") from exc
    top = FieldReader(document, "catalog", _TOP_KEYS)
    version = top.integer("version", minimum=1)
    if version != CATALOG_VERSION:
        raise top.error("version", f"unsupported version {version} (expected {CATALOG_VERSION})")
    if not top.has("models") or not isinstance(document["models"], list):
        raise top.error("models", "expected a list of model entries")
    entries: list[ModelEntry] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(document["models"]):
        entry = _entry(raw, index)
        if entry.model_id in seen:
            raise CatalogError(
                f"model {entry.model_id!r}: field 'model_id': duplicate id"
                f" (models[{seen[entry.model_id]}] and models[{index}])"
            )
        seen[entry.model_id] = index
        entries.append(entry)
    return Catalog(tuple(entries))


def render_catalog(text: str, values: Mapping[str, str]) -> str:
    """Replace each ``${NAME}`` in ``text`` with ``values[NAME]``.

    A placeholder without a value raises ``CatalogError``, as does a value that could
    change the YAML structure (quotes, backslashes, whitespace or control characters).
    Placeholders are substituted everywhere in the text, comments included.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise CatalogError(f"placeholder ${{{name}}}: no value given")
        value = values[name]
        if not _SAFE_VALUE.fullmatch(value):
            raise CatalogError(
                f"placeholder ${{{name}}}: value contains quotes, backslashes, whitespace"
                " or control characters"
            )
        return value

    return _PLACEHOLDER.sub(substitute, text)


def default_catalog_text() -> str:
    """The catalog shipped with the package (unrendered: it holds ``${...}`` placeholders)."""
    package = resources.files("somaagent.domain.routing")
    return (package / DEFAULT_CATALOG_RESOURCE).read_text(encoding="utf-8")


def _entry(raw: object, index: int) -> ModelEntry:
    where = f"models[{index}]"
    if isinstance(raw, Mapping) and isinstance(raw.get("model_id"), str):
        where = f"model {raw['model_id']!r}"
    fields = FieldReader(raw, where, _ENTRY_KEYS)
    model_id = fields.text("model_id", pattern=_MODEL_ID)
    tier = _tier(fields)
    enabled = fields.boolean("enabled")
    base_url = _base_url(fields, enabled)
    revision = fields.text("revision", pattern=_REVISION)
    ref = revision.rsplit("@", 1)[-1]
    if enabled and ref.lower() in _MOVING_REFS:
        raise fields.error("revision", f"{revision!r} is a moving ref; pin an immutable revision")
    tags = fields.strings("tags")
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise fields.error("tags", f"{tag!r} does not match {_TAG.pattern}")
    return ModelEntry(
        model_id=model_id,
        display_name=fields.text("display_name"),
        tier=tier,
        enabled=enabled,
        base_url=base_url,
        revision=revision,
        context_window=fields.integer("context_window", minimum=1),
        pricing=_pricing(fields),
        allowed_personas=fields.strings("allowed_personas"),
        developer_only=fields.boolean("developer_only", default=False),
        latency_sla_ms=MappingProxyType(fields.milliseconds("latency_sla_ms")),
        license=fields.optional_text("license"),
        tags=tags,
        concurrency=_concurrency(fields),
        rate_limits=_rate_limits(fields),
    )


def _rate_limits(fields: FieldReader) -> RateLimits | None:
    if fields.raw("rate_limits") is None:
        return None
    limits = fields.nested("rate_limits", _RATE_KEYS)
    rpm, tpm = (
        limits.integer(name, minimum=1) if limits.has(name) else None for name in ("rpm", "tpm")
    )
    if rpm is None and tpm is None:
        raise fields.error("rate_limits", "give rpm, tpm or both")
    try:
        return RateLimits(rpm, tpm)
    except ValueError as exc:
        raise fields.error("rate_limits", str(exc)) from None


def _concurrency(fields: FieldReader) -> Concurrency | None:
    if fields.raw("concurrency") is None:
        return None
    limits = fields.nested("concurrency", _CONCURRENCY_KEYS)
    in_flight = limits.integer("max_in_flight", minimum=1)
    queued = limits.integer("max_queued", minimum=0, default=DEFAULT_QUEUED_PER_SLOT * in_flight)
    wait = limits.number("max_wait_ms", default=DEFAULT_MAX_WAIT_MS)
    return Concurrency(max_in_flight=in_flight, max_queued=queued, max_wait_ms=wait)


def _tier(fields: FieldReader) -> Tier:
    value = fields.text("tier")
    for tier in TIERS:
        if value == tier:
            return tier
    raise fields.error("tier", f"unknown tier {value!r} (expected {', '.join(TIERS)})")


def _base_url(fields: FieldReader, enabled: bool) -> str | None:
    value = fields.optional_text("base_url")
    if value is None:
        if enabled:
            raise fields.error("base_url", "an enabled model needs an endpoint (or enabled: false)")
        return None
    if "${" in value:
        raise fields.error("base_url", f"unrendered placeholder {value!r} (render_catalog first)")
    if not _BASE_URL.fullmatch(value):
        raise fields.error(
            "base_url", f"{value!r} is not an http(s) URL without credentials, query or fragment"
        )
    return value.rstrip("/")


def _pricing(fields: FieldReader) -> Pricing:
    pricing = fields.nested("pricing", _PRICING_KEYS)
    token = [k for k in _TOKEN_PRICE_KEYS if pricing.has(k)]
    gpu = [k for k in _GPU_PRICE_KEYS if pricing.has(k)]
    if token and gpu:
        raise fields.error(
            "pricing", "has both per-1K token prices and a GPU cost model; give exactly one"
        )
    if gpu:
        return GpuPricing(
            gpu_hour_usd=pricing.price("gpu_hour_usd"), gpus=pricing.integer("gpus", minimum=1)
        )
    if token:
        return TokenPricing(
            input_per_1k=pricing.price("input_per_1k"),
            output_per_1k=pricing.price("output_per_1k"),
            cached_input_per_1k=pricing.price("cached_input_per_1k"),
        )
    raise fields.error(
        "pricing",
        "no pricing; give input_per_1k/output_per_1k/cached_input_per_1k or gpu_hour_usd/gpus",
    )
