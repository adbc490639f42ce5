"""Versioned rate cards: parsing, every rejection, the shipped file, look-ups at boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from somaagent.domain.ratecards import (
    RateBook,
    RateCardEntry,
    RateCardError,
    default_ratecards_text,
    parse_ratecards,
    plain_decimal,
)
from somaagent.domain.routing import GpuPricing, TokenPricing
from somaagent.service.cost_recompute import parse_instant
from tests.unit.domain.routing._catalogs import local_catalog

SPEC_EXAMPLE = """
version: 1
cards:
  - version: "2026-11-01"                # the string events carry as rate_card_version
    effective_from: "2026-11-01T00:00:00Z"
    source: "where the prices come from"
    models:
      smollm2-135m-instruct: {gpu_hour_usd: "0.10", gpus: 1, max_ms_per_token: "250"}
      mixtral-8x7b-instruct: {input_per_1k: "0.0006", output_per_1k: "0.0006", cached_input_per_1k: "0.0003"}
"""  # noqa: E501 - the example exactly as the spec writes it

GPU = '{gpu_hour_usd: "0.10", gpus: 1, max_ms_per_token: "250"}'
TOKENS = '{input_per_1k: "0.0006", output_per_1k: "0.0006", cached_input_per_1k: "0.0003"}'
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def card(version: str = '"v1"', since: str = '"2026-11-01T00:00:00Z"', **models: str) -> str:
    """One card of a rate-card list (``models`` maps model id to its flow-style prices)."""
    body = "".join(f"      {m.replace('_', '-')}: {p}\n" for m, p in models.items())
    return f"  - version: {version}\n    effective_from: {since}\n    models:\n{body}"


def cards(*parts: str) -> str:
    return "version: 1\ncards:\n" + "".join(parts)


def entry(model: str, version: str, since: datetime, price: str = "0.001") -> RateCardEntry:
    amount = Decimal(price)
    return RateCardEntry(
        model_id=model,
        version=version,
        effective_from=since,
        pricing=TokenPricing(amount, amount, amount),
        max_ms_per_token=None,
        source=None,
    )


# ---------------------------------------------------------------- parsing


def test_the_spec_example_parses_to_one_entry_per_model() -> None:
    gpu, tokens = parse_ratecards(SPEC_EXAMPLE, source="example.yaml")
    assert gpu == RateCardEntry(
        model_id="smollm2-135m-instruct",
        version="2026-11-01",
        effective_from=T0,
        pricing=GpuPricing(gpu_hour_usd=Decimal("0.10"), gpus=1),
        max_ms_per_token=Decimal("250"),
        source="where the prices come from",
    )
    assert tokens.pricing == TokenPricing(Decimal("0.0006"), Decimal("0.0006"), Decimal("0.0003"))
    assert tokens.max_ms_per_token is None
    assert str(tokens.pricing.cached_input_per_1k) == "0.0003"  # the decimal as written


def test_effective_from_with_an_offset_is_normalised_to_utc() -> None:
    (e,) = parse_ratecards(cards(card(since='"2026-11-01T02:00:00.5+02:00"', m=GPU)), source="f")
    assert e.effective_from == datetime(2026, 11, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert e.effective_from.tzinfo is UTC


def test_integers_are_exact_prices_and_source_is_optional() -> None:
    (e,) = parse_ratecards(
        cards(card(m="{gpu_hour_usd: 2, gpus: 8, max_ms_per_token: 40}")), source="f"
    )
    assert e.pricing == GpuPricing(gpu_hour_usd=Decimal(2), gpus=8)
    assert e.max_ms_per_token == Decimal(40)
    assert e.source is None


def test_the_shipped_file_matches_the_catalog_prices() -> None:
    entries = parse_ratecards(default_ratecards_text(), source="default")
    book = RateBook(entries)
    catalog = local_catalog()
    assert {e.version for e in entries} == {"catalog-v1", "2026-11-01"}
    for version in ("catalog-v1", "2026-11-01"):
        for model in catalog:  # every catalog model, live or not, is priced as in the catalog
            found = book.get(model.model_id, version)
            assert found is not None, (model.model_id, version)
            assert found.pricing == model.pricing
    bounds = {e.model_id: e.max_ms_per_token for e in entries if isinstance(e.pricing, GpuPricing)}
    assert bounds == {
        "smollm2-135m-instruct": Decimal(250),
        "qwen2.5-coder-0.5b-instruct": Decimal(500),
    }
    assert len(entries) == 2 * len(catalog)
    now = book.current("smollm2-135m-instruct", datetime(2026, 11, 22, tzinfo=UTC))
    assert now is not None and now.version == "2026-11-01"


MALFORMED = {
    "no prices": (card(m="{}"), "card 'v1': model 'm': no prices"),
    "a missing token price": (
        card(m='{input_per_1k: "0.1", output_per_1k: "0.1"}'),
        "card 'v1': model 'm': field 'cached_input_per_1k': required",
    ),
    "a missing gpus": (
        card(m='{gpu_hour_usd: "0.1", max_ms_per_token: "9"}'),
        "model 'm': field 'gpus': required",
    ),
    "a GPU model without max_ms_per_token": (
        card(m='{gpu_hour_usd: "0.1", gpus: 1}'),
        "model 'm': field 'max_ms_per_token': required",
    ),
    "token and GPU prices": (
        card(
            m='{input_per_1k: "0.1", output_per_1k: "0.1", cached_input_per_1k: "0.1",'
            ' gpu_hour_usd: "0.1", gpus: 1, max_ms_per_token: "9"}'
        ),
        "model 'm': has both per-1K token prices",
    ),
    "max_ms_per_token on a token-priced model": (
        card(
            m='{input_per_1k: "0.1", output_per_1k: "0.1", cached_input_per_1k: "0.1",'
            ' max_ms_per_token: "9"}'
        ),
        "model 'm': has both",
    ),
    "a negative price": (
        card(m='{input_per_1k: "-0.1", output_per_1k: "0.1", cached_input_per_1k: "0.1"}'),
        "model 'm': field 'input_per_1k': must not be negative",
    ),
    "a negative integer price": (
        card(m='{gpu_hour_usd: -1, gpus: 1, max_ms_per_token: "9"}'),
        "model 'm': field 'gpu_hour_usd': must not be negative",
    ),
    "a YAML float": (
        card(m="{input_per_1k: 0.0006, output_per_1k: '0.1', cached_input_per_1k: '0.1'}"),
        "model 'm': field 'input_per_1k': write it as a quoted decimal, e.g. '0.0006'",
    ),
    "19 fraction digits": (
        card(m='{gpu_hour_usd: "0.0000000000000000001", gpus: 1, max_ms_per_token: "9"}'),
        "field 'gpu_hour_usd': '0.0000000000000000001' is not a plain decimal",
    ),
    "an exponent": (
        card(m='{gpu_hour_usd: "1e-3", gpus: 1, max_ms_per_token: "9"}'),
        "field 'gpu_hour_usd': '1e-3' is not a plain decimal",
    ),
    "a zero max_ms_per_token": (
        card(m='{gpu_hour_usd: "1", gpus: 1, max_ms_per_token: "0"}'),
        "field 'max_ms_per_token': must be > 0",
    ),
    "zero gpus": (
        card(m='{gpu_hour_usd: "1", gpus: 0, max_ms_per_token: "9"}'),
        "model 'm': field 'gpus': expected an integer 1..100000",
    ),
    "gpus as a string": (
        card(m='{gpu_hour_usd: "1", gpus: "1", max_ms_per_token: "9"}'),
        "field 'gpus': expected an integer",
    ),
    "an unknown price field": (
        card(m='{gpu_hour_usd: "1", gpus: 1, max_ms_per_token: "9", per_request: "1"}'),
        "model 'm': unknown field 'per_request'",
    ),
    "an unquoted date as version": (
        card(version="2026-11-01", m=GPU),
        "cards[0]: field 'version': expected a quoted non-empty string, got date",
    ),
    "a version events cannot carry": (
        card(version='"nov 2026"', m=GPU),
        "card 'nov 2026': field 'version': 'nov 2026' does not match",
    ),
    "an unquoted timestamp": (
        card(since="2026-11-01T00:00:00Z", m=GPU),
        "card 'v1': field 'effective_from': expected a quoted RFC 3339 timestamp",
    ),
    "a timestamp without a zone": (
        card(since='"2026-11-01T00:00:00"', m=GPU),
        "card 'v1': field 'effective_from': expected a quoted RFC 3339 timestamp with a zone",
    ),
    "a timestamp that names no real instant": (
        card(since='"2026-02-30T00:00:00Z"', m=GPU),
        "card 'v1': field 'effective_from': '2026-02-30T00:00:00Z' is not a real instant",
    ),
    "a model id events cannot carry": (card(**{"a b": GPU}), "model id 'a b' must match"),
    "no models": (
        "  - version: v1\n    effective_from: '2026-11-01T00:00:00Z'\n    models: {}\n",
        "card 'v1': field 'models': expected a non-empty mapping",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_card_is_refused_naming_file_card_and_model(case: str) -> None:
    text, message = MALFORMED[case]
    with pytest.raises(RateCardError) as caught:
        parse_ratecards(cards(text), source="cards.yaml")
    assert str(caught.value).startswith("cards.yaml: "), str(caught.value)
    assert message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\ncards: [\n", "cards.yaml: invalid YAML"),
        ("version: 2\ncards: []\n", "cards.yaml: field 'version': unsupported format 2"),
        ("version: true\ncards: []\n", "field 'version': unsupported format True"),
        ("version: 1.0\ncards: []\n", "field 'version': unsupported format 1.0"),
        ("version: 1\ncards: []\n", "cards.yaml: field 'cards': expected a non-empty list"),
        ("version: 1\n", "cards.yaml: field 'cards': required"),
        ("- 1\n", "cards.yaml: expected a mapping, got list"),
        ("version: 1\ncards: [1]\n", "cards.yaml: cards[0]: expected a mapping, got int"),
        ("version: 1\nversion: 1\ncards: []\n", "invalid YAML: duplicate key 'version'"),
        ("version: 1\ncards: []\nextra: 1\n", "cards.yaml: unknown field 'extra'"),
    ],
)
def test_a_malformed_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(RateCardError) as caught:
        parse_ratecards(text, source="cards.yaml")
    assert message in str(caught.value), str(caught.value)


def test_a_repeated_key_inside_a_model_is_refused() -> None:
    text = cards(card(m='{gpu_hour_usd: "1", gpu_hour_usd: "2", gpus: 1, max_ms_per_token: "9"}'))
    with pytest.raises(RateCardError, match="duplicate key 'gpu_hour_usd'"):
        parse_ratecards(text, source="f")


def test_overlapping_versions_of_one_model_are_refused() -> None:
    text = cards(card('"a"', m=GPU, other=GPU), card('"b"', m=TOKENS))  # same effective_from
    with pytest.raises(RateCardError) as caught:
        parse_ratecards(text, source="cards.yaml")
    assert str(caught.value) == (
        "cards.yaml: model 'm': versions 'a' and 'b' both take effect at 2026-11-01T00:00:00Z"
        " (overlapping versions); give each version its own effective_from"
    )


def test_the_same_instant_written_in_two_zones_is_an_overlap() -> None:
    text = cards(card('"a"', m=GPU), card('"b"', since='"2026-11-01T01:00:00+01:00"', m=GPU))
    with pytest.raises(RateCardError, match="versions 'a' and 'b' both take effect"):
        parse_ratecards(text, source="f")


def test_a_card_version_given_twice_is_refused() -> None:
    text = cards(card('"a"', m=GPU), card('"a"', since='"2026-12-01T00:00:00Z"', other=GPU))
    with pytest.raises(RateCardError, match="f: card 'a' is given twice"):
        parse_ratecards(text, source="f")


def test_distinct_instants_for_one_model_are_versions_not_overlaps() -> None:
    text = cards(card('"a"', m=GPU), card('"b"', since='"2026-11-01T00:00:00.000001Z"', m=GPU))
    a, b = parse_ratecards(text, source="f")
    assert b.effective_from - a.effective_from == timedelta(microseconds=1)


# ---------------------------------------------------------------- entries and the book


def test_an_entry_checks_its_own_invariants() -> None:
    gpu = GpuPricing(gpu_hour_usd=Decimal("0.1"), gpus=1)
    with pytest.raises(RateCardError, match="effective_from must be an aware datetime"):
        entry("m", "v", datetime(2026, 11, 1))
    with pytest.raises(RateCardError, match="a GPU-priced model needs max_ms_per_token"):
        RateCardEntry("m", "v", T0, gpu, None, None)
    with pytest.raises(RateCardError, match="max_ms_per_token applies to GPU-priced models"):
        RateCardEntry(
            "m", "v", T0, TokenPricing(Decimal(1), Decimal(1), Decimal(1)), Decimal(1), None
        )
    with pytest.raises(RateCardError, match="input_per_1k must be a non-negative decimal"):
        entry("m", "v", T0, price="-1")
    with pytest.raises(RateCardError, match=r"does not fit numeric\(38, 18\)"):
        entry("m", "v", T0, price="0.0000000000000000001")
    with pytest.raises(RateCardError, match="version must match"):
        entry("m", "v 1", T0)
    plus2 = timezone(timedelta(hours=2))
    assert entry("m", "v", datetime(2026, 11, 1, 2, tzinfo=plus2)).effective_from == T0


def test_current_is_the_latest_version_in_effect_at_every_boundary() -> None:
    tick = timedelta(microseconds=1)
    v1 = entry("m", "v1", T0, "0.1")
    v2 = entry("m", "v2", T0 + timedelta(days=10), "0.2")
    v3 = entry("m", "v3", T0 + timedelta(days=20), "0.3")
    book = RateBook([v3, v1, v2, entry("other", "v1", T0 - timedelta(days=1))])
    assert book.current("m", T0 - tick) is None  # before any version
    assert book.current("m", T0) == v1  # effective_from is inclusive
    assert book.current("m", v2.effective_from - tick) == v1
    assert book.current("m", v2.effective_from) == v2
    assert book.current("m", v3.effective_from - tick) == v2
    assert book.current("m", v3.effective_from) == v3
    assert book.current("m", datetime(2100, 1, 1, tzinfo=UTC)) == v3
    # The same instant in another zone answers the same.
    minus5 = timezone(timedelta(hours=-5))
    assert book.current("m", v2.effective_from.astimezone(minus5)) == v2
    assert book.current("m", (v2.effective_from - tick).astimezone(minus5)) == v1
    assert book.current("unknown", T0) is None
    with pytest.raises(ValueError, match="aware"):
        book.current("m", datetime(2026, 11, 5))


def test_get_versions_and_entries() -> None:
    v1, v2 = entry("m", "v1", T0), entry("m", "v2", T0 + timedelta(days=1))
    a = entry("a", "v9", T0)
    book = RateBook([v2, a, v1])
    assert book.get("m", "v1") == v1 and book.get("m", "v3") is None and book.get("x", "v1") is None
    assert book.versions("m") == (v1, v2) and book.versions("x") == ()
    assert book.entries() == (a, v1, v2)
    assert len(book) == 3 and len(RateBook([])) == 0


def test_the_book_refuses_overlaps_and_repeated_versions() -> None:
    with pytest.raises(RateCardError, match="model 'm': versions 'v1' and 'v2' both take effect"):
        RateBook([entry("m", "v1", T0), entry("m", "v2", T0)])
    with pytest.raises(RateCardError, match="model 'm': version 'v1' is given twice"):
        RateBook([entry("m", "v1", T0), entry("m", "v1", T0 + timedelta(days=1))])
    # The same version string for different models, or one instant for different models, is fine.
    assert len(RateBook([entry("m", "v1", T0), entry("n", "v1", T0)])) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T12:30:00Z", datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
        ("2026-11-01T12:30:00", datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
        ("2026-11-01T14:30:00.25+02:00", datetime(2026, 11, 1, 12, 30, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parse_instant_reads_dates_and_times_as_utc(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected
    assert parse_instant(text).tzinfo is UTC


def test_parse_instant_refuses_what_is_not_a_date() -> None:
    with pytest.raises(ValueError):
        parse_instant("yesterday")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("12345678901234567890.123456789012345678", "12345678901234567890.123456789012345678"),
        ("0.100000000000000000", "0.1"),
        ("100", "100"),
        ("1E+2", "100"),
        ("0E-18", "0"),
        ("0.000000000000000001", "0.000000000000000001"),
    ],
)
def test_plain_decimal_drops_zeros_and_never_rounds(value: str, text: str) -> None:
    assert plain_decimal(Decimal(value)) == text
    assert Decimal(plain_decimal(Decimal(value))) == Decimal(value)
