"""Rate cards against the real PostgreSQL of the test stack, and ``soma ratecards``.

Each test prices models of its own (``rc-<random>-...``), so tests never see each other's
versions in the shared table.
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from somaagent.adapters.ratecards_store import LoadReport, RateCardStore, RateCardStoreUnavailable
from somaagent.domain.ratecards import (
    RateCardEntry,
    RateCardError,
    default_ratecards_text,
    parse_ratecards,
)
from somaagent.domain.routing import GpuPricing, TokenPricing
from somaagent.entrypoints.cli_money import add_cost, add_ratecards
from somaagent.settings import Settings


@pytest.fixture()
def store(dsn: str) -> RateCardStore:
    return RateCardStore(dsn)


@pytest.fixture()
def tag() -> str:
    return f"rc-{uuid.uuid4().hex[:10]}"


def two_cards(tag: str, *, gpu_price: str = "0.10", second: str = "v2") -> str:
    return f"""
version: 1
cards:
  - version: "v1"
    effective_from: "2026-10-01T00:00:00Z"
    source: "test card one"
    models:
      {tag}-gpu: {{gpu_hour_usd: "{gpu_price}", gpus: 2, max_ms_per_token: "250.5"}}
      {tag}-tok: {{input_per_1k: "0.0006", output_per_1k: "0.0012", cached_input_per_1k: "0.000000000000000001"}}
  - version: "{second}"
    effective_from: "2026-11-01T00:00:00Z"
    models:
      {tag}-gpu: {{gpu_hour_usd: "12345678901234567890.123456789012345678", gpus: 1, max_ms_per_token: "1"}}
"""  # noqa: E501


def mine(entries: list[RateCardEntry], tag: str) -> list[RateCardEntry]:
    return [e for e in entries if e.model_id.startswith(tag)]


def rows_of(dsn: str, tag: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT model_id, version, loaded_at FROM rate_cards WHERE model_id LIKE %s"
            " ORDER BY model_id, version",
            (f"{tag}-%",),
        ).fetchall()


def test_load_stores_every_version_exactly(store: RateCardStore, dsn: str, tag: str) -> None:
    entries = parse_ratecards(two_cards(tag), source="test")
    assert store.load(entries) == LoadReport(inserted=3, unchanged=0)
    stored = mine(store.list(), tag)
    assert sorted(stored, key=lambda e: (e.model_id, e.effective_from)) == stored
    assert stored == sorted(entries, key=lambda e: (e.model_id, e.effective_from))
    big = stored[1]
    assert big.version == "v2" and big.pricing == GpuPricing(
        gpu_hour_usd=Decimal("12345678901234567890.123456789012345678"), gpus=1
    )
    tok = stored[2]
    assert tok.pricing == TokenPricing(
        Decimal("0.0006"), Decimal("0.0012"), Decimal("0.000000000000000001")
    )
    assert tok.source == "test card one" and tok.max_ms_per_token is None
    assert stored[0].max_ms_per_token == Decimal("250.5") and stored[1].source is None
    assert str(stored[0].pricing.gpu_hour_usd) == "0.1"  # type: ignore[union-attr]
    with psycopg.connect(dsn) as conn:  # numeric(38, 18) holds every digit
        row = conn.execute(
            "SELECT gpu_hour_usd::text FROM rate_cards WHERE model_id = %s AND version = 'v2'",
            (f"{tag}-gpu",),
        ).fetchone()
    assert row == ("12345678901234567890.123456789012345678",)

    book = store.book()
    assert book.current(f"{tag}-gpu", datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)) == stored[0]
    assert book.current(f"{tag}-gpu", datetime(2026, 11, 1, tzinfo=UTC)) == stored[1]
    assert book.get(f"{tag}-tok", "v1") == tok


def test_an_identical_reload_changes_nothing(store: RateCardStore, dsn: str, tag: str) -> None:
    entries = parse_ratecards(two_cards(tag), source="test")
    assert store.load(entries) == LoadReport(inserted=3, unchanged=0)
    before = rows_of(dsn, tag)
    # The same prices written differently ("0.1" for "0.10") are the same version.
    again = parse_ratecards(two_cards(tag, gpu_price="0.1"), source="test")
    assert store.load(again) == LoadReport(inserted=0, unchanged=3)
    assert rows_of(dsn, tag) == before  # not even loaded_at moved


def test_a_reload_with_other_prices_is_refused_and_writes_nothing(
    store: RateCardStore, dsn: str, tag: str
) -> None:
    store.load(parse_ratecards(two_cards(tag), source="test"))
    before = rows_of(dsn, tag)
    # v1 re-priced, plus a brand-new version v3 and a new model in the same batch.
    changed = parse_ratecards(two_cards(tag, gpu_price="0.11", second="v3"), source="test")
    extra = RateCardEntry(
        f"{tag}-new", "v1", datetime(2026, 10, 1, tzinfo=UTC), changed[1].pricing, None, None
    )
    with pytest.raises(RateCardError) as caught:
        store.load([*changed, extra])
    assert str(caught.value) == (
        f"model '{tag}-gpu': version 'v1' is already stored with other values"
        " (gpu_hour_usd 0.1 -> 0.11); versions are immutable: add a card with a new version"
    )
    assert rows_of(dsn, tag) == before


def test_a_new_version_at_a_stored_instant_is_refused_and_writes_nothing(
    store: RateCardStore, dsn: str, tag: str
) -> None:
    store.load(parse_ratecards(two_cards(tag), source="test"))
    before = rows_of(dsn, tag)
    overlapping = parse_ratecards(
        f"""
version: 1
cards:
  - version: "v9"
    effective_from: "2026-11-01T01:00:00+01:00"
    models:
      {tag}-other: {{gpu_hour_usd: "1", gpus: 1, max_ms_per_token: "5"}}
      {tag}-gpu: {{gpu_hour_usd: "1", gpus: 1, max_ms_per_token: "5"}}
""",
        source="test",
    )
    with pytest.raises(RateCardError) as caught:
        store.load(overlapping)
    assert str(caught.value) == (
        f"conflicts with the stored rate cards: model '{tag}-gpu': versions 'v2' and 'v9'"
        " both take effect at 2026-11-01T00:00:00Z (overlapping versions);"
        " give each version its own effective_from"
    )
    assert rows_of(dsn, tag) == before


def test_concurrent_conflicting_loads_store_exactly_one(dsn: str, tag: str) -> None:
    """Two loaders race to create the same version with different prices: the table lock
    lets one in; the other then finds the version stored and is refused."""
    texts = [two_cards(tag, gpu_price=p) for p in ("0.10", "0.20")]
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def load(text: str) -> None:
        store = RateCardStore(dsn)
        entries = parse_ratecards(text, source="race")
        barrier.wait()
        try:
            outcomes.append(store.load(entries))
        except RateCardError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=load, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(type(o).__name__ for o in outcomes) == ["LoadReport", "RateCardError"]
    assert LoadReport(inserted=3, unchanged=0) in outcomes
    assert len(rows_of(dsn, tag)) == 3


def test_the_table_refuses_what_the_domain_refuses(dsn: str, tag: str) -> None:
    insert = (
        "INSERT INTO rate_cards (model_id, version, effective_from, input_per_1k,"
        " output_per_1k, cached_input_per_1k, gpu_hour_usd, gpus, max_ms_per_token)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    m = f"{tag}-raw"
    bad = [
        ((m, "v1", t0, "1", "1", "1", "1", 1, "5"), errors.CheckViolation),  # both pricings
        ((m, "v1", t0, "1", "1", None, None, None, None), errors.CheckViolation),  # missing
        ((m, "v1", t0, None, None, None, "1", 1, None), errors.CheckViolation),  # no max ms
        ((m, "v1", t0, "-1", "1", "1", None, None, None), errors.CheckViolation),  # negative
        ((m, "v1", t0, None, None, None, "1", 0, "5"), errors.CheckViolation),  # zero gpus
        ((m, "v 1", t0, "1", "1", "1", None, None, None), errors.CheckViolation),  # version
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for params, error in bad:
            with pytest.raises(error):
                conn.execute(insert, params)
        conn.execute(insert, (m, "v1", t0, "1", "1", "1", None, None, None))
        with pytest.raises(errors.UniqueViolation):  # same (model, version)
            conn.execute(insert, (m, "v1", datetime(2027, 1, 1, tzinfo=UTC), "1", "1", "1",
                                  None, None, None))  # fmt: skip
        with pytest.raises(errors.UniqueViolation):  # same (model, effective_from)
            conn.execute(insert, (m, "v2", t0, "2", "2", "2", None, None, None))
        with pytest.raises(errors.NumericValueOutOfRange):  # more than 20 integer digits
            conn.execute(insert, (m, "v3", datetime(2027, 2, 1, tzinfo=UTC),
                                  "1" * 21, "1", "1", None, None, None))  # fmt: skip


def test_store_unreachable_is_one_clear_error() -> None:
    store = RateCardStore("postgresql://postgres@127.0.0.1:1/x", connect_timeout_s=1)
    with pytest.raises(RateCardStoreUnavailable, match="^PostgreSQL unavailable: "):
        store.list()
    with pytest.raises(RateCardStoreUnavailable):
        store.load([])


# -- the CLI (in process: the subcommands are argparse builders) -----------------------------


def soma(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="soma")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ratecards(sub)
    add_cost(sub)
    args = parser.parse_args(argv)
    code: int = args.func(settings, args)
    return code


def test_cli_loads_the_packaged_cards_and_lists_them(
    stack: Settings, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert soma(stack, "ratecards", "load") == 0
    out = capsys.readouterr().out
    assert out.startswith("ratecards.default.yaml (packaged): ") and "stored" in out
    assert soma(stack, "ratecards", "load") == 0  # idempotent
    packaged = parse_ratecards(default_ratecards_text(), source="x")
    assert capsys.readouterr().out == (
        "ratecards.default.yaml (packaged): 0 model version(s) stored,"
        f" {len(packaged)} already stored unchanged\n"
    )
    assert soma(stack, "ratecards", "list", "--json") == 0
    listed = {(r["model_id"], r["version"]): r for r in json.loads(capsys.readouterr().out)}
    smollm = listed[("smollm2-135m-instruct", "2026-11-01")]
    assert smollm["pricing"] == {"gpu_hour_usd": "0.1", "gpus": 1}
    assert smollm["max_ms_per_token"] == "250" and smollm["current"] is True
    assert listed[("smollm2-135m-instruct", "catalog-v1")]["current"] is False
    assert listed[("qwen2-72b-instruct", "2026-11-01")]["pricing"] == {
        "input_per_1k": "0.0009",
        "output_per_1k": "0.0009",
        "cached_input_per_1k": "0.00045",
    }
    assert soma(stack, "ratecards", "list") == 0
    text = capsys.readouterr().out
    assert "* smollm2-135m-instruct" in text and "0.1 USD/GPU-hour x 1" in text


def test_cli_refuses_a_malformed_file_and_writes_nothing(
    stack: Settings, dsn: str, tag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first card is valid; the second has a float price: nothing at all is stored.
    text = two_cards(tag) + (
        '  - version: "v5"\n    effective_from: "2027-01-01T00:00:00Z"\n    models:\n'
        f"      {tag}-tok: {{input_per_1k: 0.5, output_per_1k: '1', cached_input_per_1k: '1'}}\n"
    )
    path = tmp_path / "cards.yaml"
    path.write_text(text)
    assert soma(stack, "ratecards", "load", str(path)) == 1
    err = capsys.readouterr().err
    assert err == (
        f"soma: error: {path}: card 'v5': model '{tag}-tok': field 'input_per_1k':"
        " write it as a quoted decimal, e.g. '0.5', not a float\n"
    )
    assert rows_of(dsn, tag) == []
    assert soma(stack, "ratecards", "load", str(tmp_path / "missing.yaml")) == 1
    assert "No such file" in capsys.readouterr().err
