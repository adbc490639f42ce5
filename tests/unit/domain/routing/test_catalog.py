"""The model catalog: parsing, every rejection, the shipped default, rendering."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from somaagent.domain.rate_limits import RateLimits
from somaagent.domain.routing import (
    Catalog,
    CatalogError,
    Concurrency,
    GpuPricing,
    TokenPricing,
    default_catalog_text,
    load_catalog,
    render_catalog,
)
from tests.unit.domain.routing._catalogs import (
    LOCAL_URLS,
    catalog_of,
    entry_yaml,
    gpu,
    local_catalog,
)

OSS_MODELS = {
    "mixtral-8x7b-instruct",
    "qwen2-72b-instruct",
    "yi-34b-chat",
    "deepseek-coder-v2-instruct",
    "phi-3-medium-128k-instruct",
}


def test_default_catalog_loads_with_two_live_local_models() -> None:
    catalog = local_catalog()
    assert [e.model_id for e in catalog.live()] == [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
    ]
    primary = catalog.get("smollm2-135m-instruct")
    coder = catalog.get("qwen2.5-coder-0.5b-instruct")
    assert primary is not None and coder is not None
    assert (primary.tier, primary.developer_only) == ("primary", False)
    assert (coder.tier, coder.developer_only) == ("escalation", True)
    assert primary.base_url == "http://127.0.0.1:18081/v1"
    assert coder.base_url == "http://127.0.0.1:18082/v1"
    for entry in (primary, coder):
        assert entry.pricing == GpuPricing(gpu_hour_usd=Decimal("0.10"), gpus=1)
        assert "@sha256:" in entry.revision


def test_default_catalog_lists_the_seed_oss_models_disabled_without_endpoint() -> None:
    catalog = local_catalog()
    oss = {e.model_id: e for e in catalog if "oss" in e.tags}
    assert set(oss) == OSS_MODELS
    for entry in oss.values():
        assert entry.tier == "escalation"
        assert not entry.enabled and entry.base_url is None and not entry.live
        assert isinstance(entry.pricing, TokenPricing)
        assert entry.pricing.input_per_1k > 0 and "price-placeholder" in entry.tags
        assert entry.license and entry.context_window >= 4096 and "@" in entry.revision
    assert oss["deepseek-coder-v2-instruct"].developer_only
    assert catalog.live("escalation") == (catalog.get("qwen2.5-coder-0.5b-instruct"),)


def test_oss_entry_goes_live_once_enabled_on_a_pinned_revision_with_an_endpoint() -> None:
    text = render_catalog(default_catalog_text(), LOCAL_URLS)
    enabled = text.replace(
        "    enabled: false\n    base_url: null\n"
        "    # The commit MLCommons pins for its inference reference.\n",
        "    enabled: true\n    base_url: https://mixtral.internal:8443/v1\n",
    )
    assert enabled != text
    mixtral = load_catalog(enabled).get("mixtral-8x7b-instruct")
    assert mixtral is not None and mixtral.live


def test_default_catalog_unrendered_is_refused_naming_the_placeholder() -> None:
    with pytest.raises(CatalogError, match=r"model 'smollm2-135m-instruct': field 'base_url'"):
        load_catalog(default_catalog_text())


def test_render_substitutes_and_refuses_unknown_or_unsafe_values() -> None:
    assert render_catalog("a: ${X}\nb: ${X}/v1", {"X": "http://h:1"}) == (
        "a: http://h:1\nb: http://h:1/v1"
    )
    with pytest.raises(CatalogError, match=r"placeholder \$\{ESCALATION_MODEL_URL\}: no value"):
        render_catalog(
            default_catalog_text(), {"PRIMARY_MODEL_URL": "http://h:1/v1", "MODEL_PARALLEL": "4"}
        )
    for bad in ('http://h:1"\nx: 1', "http://h:1 #", "a\\b"):
        with pytest.raises(CatalogError, match=r"placeholder \$\{X\}: value contains"):
            render_catalog("a: ${X}", {"X": bad})


def test_gpu_cost_model_is_exact_decimal() -> None:
    pricing = GpuPricing(gpu_hour_usd=Decimal("0.10"), gpus=2)
    assert pricing.cost_of_ms(Decimal(3_600_000)) == Decimal("0.20")
    assert pricing.cost_of_ms(Decimal(1800)) == Decimal("0.0001")
    assert pricing.per_1k_tokens(Decimal(18)) == Decimal("0.001")
    token = TokenPricing(Decimal("0.0006"), Decimal("0.0010"), Decimal("0.0003"))
    assert token.list_price_per_1k() == Decimal("0.0008")


def test_catalog_queries() -> None:
    catalog = catalog_of(
        entry_yaml("p1", "primary", pricing=gpu()),
        entry_yaml("e-dev", "escalation", developer_only=True),
        entry_yaml("e-support", "escalation", personas='["support*", "sales"]'),
        entry_yaml("e-off", "escalation", enabled=False, url=None),
        entry_yaml("s1", "slm", sla="default: 900\n      support: 400"),
    )
    assert len(catalog) == 5 and "p1" in catalog and catalog.get("nope") is None
    assert [e.model_id for e in catalog.list(tier="escalation")] == [
        "e-dev",
        "e-support",
        "e-off",
    ]
    assert [e.model_id for e in catalog.live("escalation")] == ["e-dev", "e-support"]

    def ids(persona: str, role: str) -> list[str]:
        return [e.model_id for e in catalog.allowed_for(persona, role, tier="escalation")]

    assert ids("developer", "member") == ["e-dev"]
    assert ids("analyst", "developer") == ["e-dev"]
    assert ids("support-tier2", "member") == ["e-support"]
    assert ids("sales", "member") == ["e-support"]
    assert ids("marketing", "member") == []
    slm = catalog.get("s1")
    assert slm is not None and slm.sla_ms("support") == 400 and slm.sla_ms("other") == 900


def test_catalog_constructor_refuses_duplicate_ids() -> None:
    entry = local_catalog().entries[0]
    with pytest.raises(CatalogError, match="duplicate"):
        Catalog((entry, dataclasses.replace(entry)))


def _one_line(exc: pytest.ExceptionInfo[CatalogError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            entry_yaml("m", "gold"),
            "model 'm': field 'tier': unknown tier 'gold' (expected primary, slm, escalation)",
        ),
        (
            entry_yaml("m", "primary", pricing='input_per_1k: "1"\n      gpus: 1'),
            "model 'm': field 'pricing': has both per-1K token prices and a GPU cost model",
        ),
        (entry_yaml("m", "primary", pricing="{}"), "model 'm': field 'pricing': no pricing"),
        (
            entry_yaml("m", "primary", pricing=gpu(hour="-0.10")),
            "model 'm': field 'pricing': field 'gpu_hour_usd': price must not be negative",
        ),
        (
            entry_yaml(
                "m",
                "primary",
                pricing='input_per_1k: "-1"\n      output_per_1k: "1"\n'
                '      cached_input_per_1k: "1"',
            ),
            "field 'input_per_1k': price must not be negative, got -1",
        ),
        (
            entry_yaml("m", "primary", pricing="gpu_hour_usd: 0.1\n      gpus: 1"),
            "field 'gpu_hour_usd': write the price as a quoted decimal string",
        ),
        (
            entry_yaml("m", "primary", pricing='gpu_hour_usd: "1e-3"\n      gpus: 1'),
            "field 'gpu_hour_usd': '1e-3' is not a plain decimal number",
        ),
        (
            entry_yaml("m", "primary", pricing=gpu(gpus=0)),
            "field 'gpus': must be >= 1, got 0",
        ),
        (
            entry_yaml("m", "primary", pricing=gpu() + "\n      spot: true"),
            "model 'm': field 'pricing': unknown field 'spot'",
        ),
        (
            entry_yaml("m", "primary", url=None),
            "model 'm': field 'base_url': an enabled model needs an endpoint",
        ),
        (
            entry_yaml("m", "primary", url="http://user:pw@h:1/v1"),
            "model 'm': field 'base_url': 'http://user:pw@h:1/v1' is not an http(s) URL",
        ),
        (
            entry_yaml("m", "primary", sla="support: 100"),
            "model 'm': field 'latency_sla_ms': needs a 'default' entry",
        ),
        (
            entry_yaml("m", "primary", sla="default: -5"),
            "model 'm': field 'latency_sla_ms': default: expected a positive number of ms",
        ),
        (
            entry_yaml("m", "primary") + "    owner: me\n",
            "model 'm': unknown field 'owner'",
        ),
        (
            entry_yaml("m", "primary").replace("@0123456789abcdef", "@main"),
            "model 'm': field 'revision': 'org/m@main' is a moving ref",
        ),
        (
            entry_yaml("m", "primary").replace("context_window: 8192", "context_window: 0"),
            "model 'm': field 'context_window': must be >= 1, got 0",
        ),
        (
            entry_yaml("bad id", "primary"),
            "model 'bad id': field 'model_id': 'bad id' does not match",
        ),
        (
            entry_yaml("m", "primary").replace("    tier: primary\n", ""),
            "model 'm': field 'tier': required",
        ),
        (
            entry_yaml("m", "primary") + "    concurrency:\n      max_queued: 3\n",
            "model 'm': field 'concurrency': field 'max_in_flight': required",
        ),
        (
            entry_yaml("m", "primary") + "    concurrency:\n      max_in_flight: 0\n",
            "field 'concurrency': field 'max_in_flight': must be >= 1, got 0",
        ),
        (
            entry_yaml("m", "primary") + '    concurrency:\n      max_in_flight: "4"\n',
            "field 'max_in_flight': expected an integer, got string '4'",
        ),
        (
            entry_yaml("m", "primary")
            + "    concurrency:\n      max_in_flight: 2\n      max_queued: -1\n",
            "field 'max_queued': must be >= 0, got -1",
        ),
        (
            entry_yaml("m", "primary")
            + "    concurrency:\n      max_in_flight: 2\n      max_wait_ms: 0\n",
            "field 'max_wait_ms': must be a positive, finite number, got 0",
        ),
        (
            entry_yaml("m", "primary")
            + "    concurrency:\n      max_in_flight: 2\n      burst: 9\n",
            "model 'm': field 'concurrency': unknown field 'burst'",
        ),
        (
            entry_yaml("m", "primary") + "    rate_limits: {}\n",
            "model 'm': field 'rate_limits': give rpm, tpm or both",
        ),
        (
            entry_yaml("m", "primary") + "    rate_limits:\n      rpm: 0\n",
            "field 'rate_limits': field 'rpm': must be >= 1, got 0",
        ),
        (
            entry_yaml("m", "primary") + "    rate_limits:\n      tpm: 10000000000\n",
            "field 'rate_limits': tpm must be an integer from 1 to 1000000000",
        ),
        (
            entry_yaml("m", "primary") + "    rate_limits:\n      rpd: 5\n",
            "model 'm': field 'rate_limits': unknown field 'rpd'",
        ),
    ],
)
def test_entry_errors_name_the_model_and_field(entry: str, expected: str) -> None:
    with pytest.raises(CatalogError) as exc:
        catalog_of(entry)
    assert expected in _one_line(exc)


def test_concurrency_defaults_and_the_local_models_slots() -> None:
    capped = entry_yaml("a", "primary") + "    concurrency:\n      max_in_flight: 3\n"
    exact = (
        entry_yaml("b", "primary")
        + "    concurrency:\n      max_in_flight: 1\n      max_queued: 0\n"
        + "      max_wait_ms: 250.5\n"
    )
    catalog = catalog_of(capped + exact + entry_yaml("c", "primary"))
    assert catalog.get("a").concurrency == Concurrency(3, 24, 30_000.0)  # type: ignore[union-attr]
    assert catalog.get("b").concurrency == Concurrency(1, 0, 250.5)  # type: ignore[union-attr]
    assert catalog.get("c").concurrency is None  # type: ignore[union-attr]
    two_slots = {**LOCAL_URLS, "MODEL_PARALLEL": "2"}
    local = load_catalog(render_catalog(default_catalog_text(), two_slots))
    assert [e.concurrency for e in local.live()] == [Concurrency(2, 16, 30_000.0)] * 2
    assert all(e.concurrency is None for e in local if not e.live)


def test_rate_limits_are_read_per_model() -> None:
    both = entry_yaml("a", "primary") + "    rate_limits:\n      rpm: 60\n      tpm: 90000\n"
    catalog = catalog_of(both + entry_yaml("b", "primary") + "    rate_limits: {tpm: 5}\n")
    assert catalog.get("a").rate_limits == RateLimits(60, 90000)  # type: ignore[union-attr]
    assert catalog.get("b").rate_limits == RateLimits(None, 5)  # type: ignore[union-attr]
    assert all(e.rate_limits is None for e in local_catalog())


def test_disabled_entry_may_lack_endpoint_and_sit_on_a_moving_ref() -> None:
    entry = entry_yaml("m", "escalation", enabled=False, url=None).replace(
        "@0123456789abcdef", "@main"
    )
    model = catalog_of(entry).get("m")
    assert model is not None and not model.live


def test_duplicate_model_ids_are_refused() -> None:
    with pytest.raises(CatalogError) as exc:
        catalog_of(entry_yaml("m", "primary"), entry_yaml("m", "escalation"))
    assert _one_line(exc) == ("model 'm': field 'model_id': duplicate id (models[0] and models[1])")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nmodels: []\nowner: me\n", "catalog: unknown field 'owner'"),
        ("version: 2\nmodels: []\n", "catalog: field 'version': unsupported version 2"),
        ("version: 1\n", "catalog: field 'models': expected a list"),
        ("- 1\n", "catalog: expected a mapping, got list"),
        ("version: 1\nmodels: [\n", "catalog: invalid YAML"),
        ("version: 1\nversion: 1\nmodels: []\n", "duplicate key 'version'"),
        ("version: 1\nmodels:\n  - 7\n", "models[0]: expected a mapping, got int"),
        (
            "version: 1\nmodels:\n"
            + entry_yaml("m", "primary").replace(
                "    enabled: true\n", "    enabled: true\n    enabled: false\n"
            ),
            "duplicate key 'enabled'",
        ),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    with pytest.raises(CatalogError) as exc:
        load_catalog(text)
    assert expected in _one_line(exc)
